"""OCI image layout directories (image-spec image-layout.md): `oci-layout`, `index.json`,
and every blob under `blobs/<algorithm>/<hex>`. Read with every digest checked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from assembler.oci import media
from assembler.oci.digest import digest_of, hex_of, read_chunks
from assembler.oci.image import (
    BlobLocation,
    Descriptor,
    Image,
    digest_location,
    open_location,
    parse_manifest,
    platform_entry,
)
from assembler.oci.tree import DirTree, Tree, malformed, read_small

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"  # what containerd (and docker 25+) name entries by
DEFAULT_PLATFORM = ("linux", "amd64")


def blob_name(digest: str) -> str:
    return f"blobs/{digest.partition(':')[0]}/{hex_of(digest)}"


def dumps(obj: Any) -> bytes:
    """JSON as this tool writes it everywhere: the same bytes for the same content."""
    return json.dumps(obj, separators=(",", ":")).encode()


def read_oci_layout(
    root: Path, ref_name: str | None = None, platform: tuple[str, str] = DEFAULT_PLATFORM
) -> Image:
    """The image of an OCI layout dir (the one named ref_name when it holds several)."""
    if not root.is_dir():
        raise malformed(root, "not a directory")
    return read_layout_tree(DirTree(root), ref_name, platform)


def read_layout_tree(
    tree: Tree, ref_name: str | None = None, platform: tuple[str, str] = DEFAULT_PLATFORM
) -> Image:
    where = tree.where
    layout = _json(tree, LAYOUT_FILE)
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise malformed(where, f"{LAYOUT_FILE} has no imageLayoutVersion")
    entry = _choose(_manifests(_json(tree, INDEX_FILE), where), ref_name, platform, where)
    desc = _descriptor(entry, where)
    if desc.media_type in media.INDEXES:  # a multi-platform image: one level down
        nested = _manifests(json.loads(_verified_bytes(tree, desc)), where)
        found = platform_entry(nested, platform)
        if found is None:
            raise malformed(where, f"no {platform[0]}/{platform[1]} image in its index")
        desc = _descriptor(found, where)
    if desc.media_type not in media.MANIFESTS:
        raise malformed(where, f"{desc.digest} is a {desc.media_type}, not an image manifest")
    return image_from_tree(tree, desc.media_type, _verified_bytes(tree, desc))


def image_from_tree(tree: Tree, media_type: str, manifest: bytes) -> Image:
    """The image a manifest describes, its blobs found in tree by digest and each checked."""
    try:
        config, layers = parse_manifest(manifest)
    except ValueError as exc:
        raise malformed(tree.where, str(exc)) from exc
    blobs: dict[str, BlobLocation] = {}
    for desc in (config, *layers):
        if desc.digest not in blobs:
            blobs[desc.digest] = verified(tree, blob_name(desc.digest), desc)
    return Image(manifest, media_type, config, layers, blobs)


def verified(tree: Tree, name: str, desc: Descriptor) -> BlobLocation:
    """Where desc's bytes are in tree, once their size and digest are checked."""
    loc = tree.locate(name)
    if loc is None:
        raise malformed(tree.where, f"blob {desc.digest} is missing")
    digest, size = digest_location(loc, desc.digest)
    if digest != desc.digest or size != desc.size:
        raise malformed(
            tree.where, f"digest mismatch for {name}: {digest} ({size} bytes), not {desc.digest}"
        )
    return loc


def _verified_bytes(tree: Tree, desc: Descriptor) -> bytes:
    data = read_small(tree, blob_name(desc.digest))
    if digest_of(data, desc.digest) != desc.digest or len(data) != desc.size:
        raise malformed(tree.where, f"digest mismatch for {blob_name(desc.digest)}")
    return data


def _json(tree: Tree, name: str) -> object:
    try:
        return json.loads(read_small(tree, name))
    except ValueError as exc:
        raise malformed(tree.where, f"{name} is not JSON") from exc


def _manifests(index: object, where: Path) -> list[object]:
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise malformed(where, "its index lists no manifests")
    return entries


def _descriptor(entry: object, where: Path) -> Descriptor:
    try:
        return Descriptor.from_json(entry)
    except ValueError as exc:
        raise malformed(where, str(exc)) from exc


def _names(entry: object) -> set[str]:
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    if not isinstance(annotations, dict):
        return set()
    return {str(annotations[k]) for k in (REF_NAME, CONTAINERD_NAME) if k in annotations}


def _choose(
    entries: list[object], ref_name: str | None, platform: tuple[str, str], where: Path
) -> object:
    if ref_name is not None:
        entries = [e for e in entries if ref_name in _names(e)]
        if not entries:
            raise malformed(where, f"no image named {ref_name}")
    # One image under several names (docker writes an entry per tag) is still one image.
    digests = {e.get("digest") for e in entries if isinstance(e, dict)}
    if len(digests) == 1:
        return entries[0]
    found = platform_entry(entries, platform)
    if found is not None:
        return found
    names = sorted(n for e in entries for n in _names(e)) or ["(unnamed)"]
    raise malformed(where, f"it holds {len(digests)} images ({', '.join(names)}); name one")


# --- writing -----------------------------------------------------------------------------------


def write_oci_layout(image: Image, dest: Path, ref_name: str | None = None) -> Image:
    """Write image as an OCI layout at dest (replacing what was there, in one rename);
    returns the same image, its blobs now read from dest."""
    tmp = sibling_dir(dest, "tmp")
    try:
        blobs: dict[str, BlobLocation] = {}
        for desc in image.descriptors:
            path = tmp / blob_name(desc.digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy_blob(image.blobs[desc.digest], path)
            blobs[desc.digest] = BlobLocation(dest / blob_name(desc.digest), 0, desc.size)
        write_layout_files(tmp, image, ref_name)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Image(image.manifest, image.manifest_media_type, image.config, image.layers, blobs)


def write_layout_files(root: Path, image: Image, ref_name: str | None) -> None:
    """oci-layout, index.json and the manifest blob (the other blobs are the caller's)."""
    manifest_path = root / blob_name(image.manifest_digest)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_bytes(image.manifest)
    (root / LAYOUT_FILE).write_bytes(dumps({"imageLayoutVersion": LAYOUT_VERSION}))
    (root / INDEX_FILE).write_bytes(dumps(index_json(image, {REF_NAME: ref_name})))


def index_json(image: Image, *annotations: Mapping[str, str | None]) -> dict[str, Any]:
    """An index with one entry per annotation set (docker writes one per tag)."""
    entries = []
    for notes in annotations or ({},):
        entry = image.manifest_descriptor.to_json()
        kept = {k: v for k, v in notes.items() if v}
        if kept:
            entry["annotations"] = kept
        entries.append(entry)
    return {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries}


def _copy_blob(src: BlobLocation, dest: Path) -> None:
    if src.offset == 0 and os.stat(src.path).st_size == src.size:
        with contextlib.suppress(OSError):  # another file system: copy instead
            os.link(src.path, dest)
            return
    with open_location(src) as f, dest.open("wb") as out:
        for chunk in read_chunks(f):
            out.write(chunk)


def sibling_dir(dest: Path, what: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = dest.with_name(f".{dest.name}.{what}-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def replace_dir(new: Path, dest: Path) -> None:
    """Put the complete dir `new` at dest; what dest held is removed only afterwards."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
    os.rename(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
