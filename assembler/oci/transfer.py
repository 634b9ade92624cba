"""Moving an image between a registry and disk: pull into an OCI layout, push from any Image."""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path

from assembler.download import locked, write_atomically
from assembler.errors import UsageError
from assembler.oci import media
from assembler.oci.image import BlobLocation, Descriptor, Image, digest_location, parse_manifest
from assembler.oci.ocidir import (
    DEFAULT_PLATFORM,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    REF_NAME,
    blob_name,
    dumps,
)
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient, RegistryError

log = logging.getLogger(__name__)
# Also in the index: the full name, as containerd writes it, so a layout can hold repositories.
FULL_NAME = "io.containerd.image.name"


def pull(
    client: RegistryClient,
    ref: Reference,
    dest: Path,
    platform: tuple[str, str] = DEFAULT_PLATFORM,
) -> Image:
    """Fetch ref's image (for platform) into the OCI layout at dest, made if missing.

    Blobs dest already holds (checked) are not fetched again, so one layout can serve a
    repository's tags and rebuilds; each blob enters it only once its digest matched, and
    index.json names the image by ref's tag (and full name) only when all of it is there.
    """
    fetched = client.manifest(ref, platform)
    try:
        config, layers = parse_manifest(fetched.body)
    except ValueError as exc:
        raise RegistryError(f"{client.host}/{ref.repository}@{fetched.digest}: {exc}") from exc
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest.parent / f".{dest.name}.lock", str(dest)):
        blobs: dict[str, BlobLocation] = {}
        for desc in (config, *layers):
            if desc.digest not in blobs:
                blobs[desc.digest] = _fetch_blob(client, ref, desc, dest)
        manifest_path = dest / blob_name(fetched.digest)
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(manifest_path, fetched.body)
        image = Image(fetched.body, fetched.media_type, config, layers, blobs)
        _name_in_index(dest, image, ref)
    return image


def _fetch_blob(
    client: RegistryClient, ref: Reference, desc: Descriptor, dest: Path
) -> BlobLocation:
    path = dest / blob_name(desc.digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    loc = BlobLocation(path, 0, desc.size)
    have = path.is_file() and os.stat(path).st_size == desc.size
    if have and digest_location(loc, desc.digest)[0] == desc.digest:
        log.debug("%s: have %s", dest, desc.digest)
        return loc
    log.debug("pulling %s (%d bytes) of %s", desc.digest, desc.size, ref)
    client.blob(ref.repository, desc.digest, path, desc.size)
    return loc


def _name_in_index(dest: Path, image: Image, ref: Reference) -> None:
    """index.json with this image under ref's names, replacing what those names pointed to."""
    entries: list[object] = []
    index_path = dest / INDEX_FILE
    try:
        old = json.loads(index_path.read_text())
        entries = list(old.get("manifests", [])) if isinstance(old, dict) else []
    except (OSError, ValueError):
        entries = []  # a fresh layout, or one an earlier crash left without a readable index
    full = str(Reference(ref.registry, ref.repository, ref.tag, None))
    entries = [e for e in entries if not (isinstance(e, dict) and _named(e, full))]
    entry = image.manifest_descriptor.to_json()
    entry["annotations"] = {REF_NAME: ref.tag or image.manifest_digest, FULL_NAME: full}
    entries.append(entry)
    index = {"schemaVersion": 2, "mediaType": media.OCI_INDEX}
    write_atomically(dest / LAYOUT_FILE, dumps({"imageLayoutVersion": LAYOUT_VERSION}))
    write_atomically(index_path, dumps({**index, "manifests": entries}))


def _named(entry: dict[str, object], full: str) -> bool:
    annotations = entry.get("annotations")
    return isinstance(annotations, dict) and annotations.get(FULL_NAME) == full


def push(client: RegistryClient, image: Image, ref: Reference) -> str:
    """Upload image's blobs (those the registry lacks) and its manifest under ref's tag, or
    its digest; returns the manifest digest."""
    client.check_host(ref)
    if ref.digest is not None and ref.digest != image.manifest_digest:
        raise UsageError(f"{ref} names a digest; the image is {image.manifest_digest}")
    for desc in (*image.layers, image.config):
        opener = partial(image.open_blob, desc.digest)
        client.push_blob(ref.repository, desc.digest, desc.size, opener)
    return client.push_manifest(
        ref.repository, ref.tag or image.manifest_digest, image.manifest_media_type, image.manifest
    )
