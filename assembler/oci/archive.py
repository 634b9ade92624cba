"""`docker save` archives: read either layout docker writes, write one `docker load` takes.

Old docker (< 25) writes `manifest.json` (Config, RepoTags, Layers) beside `<hex>.json` configs
and `<id>/layer.tar` layers, which name no digest: those are checked against the config's
`rootfs.diff_ids`. Docker 25+ writes the same manifest.json over an OCI layout
(`blobs/sha256/<hex>`, index.json). We write the latter: dockerd's loader reads manifest.json,
containerd's reads index.json, and both accept gzip layers.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from assembler.errors import UsageError
from assembler.oci import media
from assembler.oci.digest import digest_chunks, read_chunks, sha256_of
from assembler.oci.image import (
    BlobLocation,
    Descriptor,
    Image,
    digest_location,
    make_manifest,
    open_location,
    parse_manifest,
)
from assembler.oci.ocidir import (
    CONTAINERD_NAME,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    REF_NAME,
    blob_name,
    dumps,
    index_json,
    read_layout_tree,
)
from assembler.oci.reference import Reference
from assembler.oci.tree import TarTree, Tree, malformed, read_small

MANIFEST_FILE = "manifest.json"
FIXED_MTIME = 0  # every member: the same image gives the same archive bytes
_NAMED_BLOB = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)")
_LEGACY_CONFIG = re.compile(r"([0-9a-f]{64})\.json")


def read_docker_archive(tar_path: Path, tag: str | None = None) -> Image:
    """The image in a docker save tar (the one tagged `tag`, e.g. `postgres:15`, if several)."""
    if not tar_path.is_file():
        raise malformed(tar_path, "no such file")
    tree = TarTree(tar_path)
    if tree.locate(MANIFEST_FILE) is None:
        if tree.locate(INDEX_FILE) is not None:  # a tar of an OCI layout
            return read_layout_tree(tree, tag)
        raise malformed(tar_path, f"neither {MANIFEST_FILE} nor {INDEX_FILE} in it")
    config_name, layer_names = _entry(tree, tag)
    config = read_small(tree, config_name)
    config_desc = Descriptor(media.OCI_CONFIG, sha256_of(config), len(config))
    named = _named_digest(config_name)
    if named is not None and named != config_desc.digest:
        raise malformed(tar_path, f"digest mismatch for {config_name}")
    diff_ids = _diff_ids(config, len(layer_names), tar_path)
    blobs = {config_desc.digest: _located(tree, config_name)}
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        loc = _located(tree, name)
        digest, size = digest_location(loc)
        named = _named_digest(name)
        if named is not None and named != digest:
            raise malformed(tar_path, f"digest mismatch for {name}: it holds {digest}")
        with open_location(loc) as f:
            layer_type = media.layer_type(f.read(8))
        if named is None and _uncompressed_digest(loc, layer_type, tar_path) != diff_id:
            raise malformed(tar_path, f"{name} does not match its diff_id {diff_id}")
        layers.append(Descriptor(layer_type, digest, size))
        blobs[digest] = loc
    kept = _original_manifest(tree, config_desc, layers)
    if kept is not None:
        return Image(kept[1], kept[0], config_desc, tuple(layers), blobs)
    manifest = make_manifest(config_desc, layers)
    return Image(manifest, media.OCI_MANIFEST, config_desc, tuple(layers), blobs)


def _entry(tree: Tree, tag: str | None) -> tuple[str, list[str]]:
    """(Config, Layers) of the one manifest.json entry wanted."""
    try:
        entries = json.loads(read_small(tree, MANIFEST_FILE))
    except ValueError as exc:
        raise malformed(tree.where, f"{MANIFEST_FILE} is not JSON") from exc
    good: list[tuple[str, list[str], list[str]]] = []
    for e in entries if isinstance(entries, list) else []:
        config = e.get("Config") if isinstance(e, dict) else None
        layers = e.get("Layers") if isinstance(e, dict) else None
        if not isinstance(config, str) or not isinstance(layers, list):
            continue
        if all(isinstance(x, str) for x in layers):
            tags = e.get("RepoTags") or []
            good.append((config, layers, [str(t) for t in tags] if isinstance(tags, list) else []))
    if not good:
        raise malformed(tree.where, f"{MANIFEST_FILE} lists no image (Config, Layers)")
    if tag is not None:
        good = [e for e in good if tag in e[2]]
        if not good:
            raise malformed(tree.where, f"no image tagged {tag}")
    if len(good) > 1:
        tags = sorted(t for e in good for t in e[2])
        raise malformed(tree.where, f"it holds {len(good)} images ({', '.join(tags)}); name one")
    return good[0][0], good[0][1]


def _located(tree: Tree, name: str) -> BlobLocation:
    loc = tree.locate(name)
    if loc is None:
        raise malformed(tree.where, f"{name} is missing")
    return loc


def _named_digest(name: str) -> str | None:
    if m := _NAMED_BLOB.fullmatch(name.removeprefix("./")):
        return f"{m[1]}:{m[2]}"
    if m := _LEGACY_CONFIG.fullmatch(name.removeprefix("./")):
        return f"sha256:{m[1]}"
    return None


def _diff_ids(config: bytes, count: int, where: Path) -> list[str]:
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise malformed(where, "its image config has no rootfs.diff_ids") from exc
    if not isinstance(diff_ids, list) or len(diff_ids) != count:
        raise malformed(where, f"its config names {len(diff_ids)} layers, manifest.json {count}")
    return [str(d) for d in diff_ids]


def _uncompressed_digest(loc: BlobLocation, layer_type: str, where: Path) -> str:
    """sha256 of the layer's tar (its diff_id): old archives name layers by nothing else."""
    with open_location(loc) as f:
        if layer_type == media.OCI_LAYER:
            return digest_chunks(read_chunks(f))[0]
        if layer_type != media.OCI_LAYER_GZIP:
            raise malformed(where, f"a layer compressed as {layer_type} cannot be checked")
        try:
            with gzip.GzipFile(fileobj=f) as z:
                return digest_chunks(read_chunks(z))[0]  # type: ignore[arg-type]
        except (OSError, EOFError, zlib.error) as exc:
            raise malformed(where, f"a layer is not valid gzip ({exc})") from exc


def _original_manifest(
    tree: Tree, config: Descriptor, layers: list[Descriptor]
) -> tuple[str, bytes] | None:
    """The manifest docker 25+ saved beside manifest.json, when it describes these blobs:
    keeping its bytes keeps the image's digest."""
    if tree.locate(INDEX_FILE) is None:
        return None
    try:
        image = read_layout_tree(tree)
    except UsageError:
        return None
    try:
        found_config, found_layers = parse_manifest(image.manifest)
    except ValueError:
        return None
    same = found_config.digest == config.digest and [d.digest for d in found_layers] == [
        d.digest for d in layers
    ]
    return (image.manifest_media_type, image.manifest) if same else None


# --- writing -----------------------------------------------------------------------------------


def repo_tag(ref: Reference) -> str:
    """How docker writes a tag in RepoTags: the familiar name, a tag, no digest."""
    if not ref.tag:
        raise UsageError(f"{ref} has no tag; a docker archive needs one")
    return Reference(ref.registry, ref.repository, ref.tag).familiar


def write_docker_archive(image: Image, tags: Sequence[Reference | str], tar_path: Path) -> None:
    """A tar `docker load` takes, the same bytes for the same image and tags, made in a temp
    file beside tar_path and renamed into place whole."""
    refs = [t if isinstance(t, Reference) else Reference.parse(t) for t in tags]
    entry = {
        "Config": blob_name(image.config.digest),
        "RepoTags": [repo_tag(t) for t in refs],
        "Layers": [blob_name(d.digest) for d in image.layers],
    }
    notes = [{CONTAINERD_NAME: str(t), REF_NAME: t.tag} for t in refs]
    files: dict[str, BlobLocation | bytes] = {
        blob_name(d.digest): image.blobs[d.digest] for d in image.descriptors
    }
    files[blob_name(image.manifest_digest)] = image.manifest
    files[MANIFEST_FILE] = dumps([entry])
    files[INDEX_FILE] = dumps(index_json(image, *notes))
    files[LAYOUT_FILE] = dumps({"imageLayoutVersion": LAYOUT_VERSION})
    tmp = tar_path.with_name(f".{tar_path.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            dirs = sorted({p for name in files for p in _parents(name)})
            for name in sorted([*dirs, *files]):
                content = files.get(name)
                if content is None:
                    tar.addfile(_info(name + "/", tarfile.DIRTYPE, 0, 0o755))
                elif isinstance(content, bytes):
                    tar.addfile(_info(name, tarfile.REGTYPE, len(content)), io.BytesIO(content))
                else:
                    with open_location(content) as f:
                        tar.addfile(_info(name, tarfile.REGTYPE, content.size), f)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, tar_path)
    finally:
        tmp.unlink(missing_ok=True)


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _info(name: str, kind: bytes, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
