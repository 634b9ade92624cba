"""One image as this tool holds it: a manifest (exact bytes), its config and ordered layers,
and where each blob's bytes lie on disk (a file, or a stretch of an uncompressed tar)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from assembler.oci import media
from assembler.oci.digest import digest_chunks, digest_problem, read_chunks, sha256_of


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, obj: object) -> Descriptor:
        """Raises ValueError (with the reason) on anything but a valid descriptor."""
        if not isinstance(obj, dict):
            raise ValueError("a descriptor is not an object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise ValueError("a descriptor lacks mediaType or digest")
        if problem := digest_problem(digest):
            raise ValueError(problem)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"descriptor {digest} has no valid size")
        return cls(media_type, digest, size)


@dataclass(frozen=True)
class BlobLocation:
    path: Path
    offset: int
    size: int


class _Slice(io.RawIOBase):
    """`size` bytes of a file from `offset`: a blob inside a tar, read without extracting."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._f = path.open("rb")
        self._f.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._f.readinto(view[: min(len(view), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def open_location(loc: BlobLocation) -> BinaryIO:
    return io.BufferedReader(_Slice(loc.path, loc.offset, loc.size))


def digest_location(loc: BlobLocation, like: str = "sha256:") -> tuple[str, int]:
    with open_location(loc) as f:
        return digest_chunks(read_chunks(f), like)


@dataclass(frozen=True)
class Image:
    manifest: bytes  # exact bytes: the image's identity is their digest
    manifest_media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    blobs: Mapping[str, BlobLocation]  # digest -> its verified bytes

    @property
    def manifest_digest(self) -> str:
        return sha256_of(self.manifest)

    digest = manifest_digest  # what `docker pull` shows as the image's digest

    @property
    def size(self) -> int:
        """Bytes of its config and layers, each blob once (what a pull transfers)."""
        return sum(d.size for d in self.descriptors)

    @property
    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(self.manifest_media_type, self.manifest_digest, len(self.manifest))

    @property
    def descriptors(self) -> tuple[Descriptor, ...]:
        """Config and layers, each digest once."""
        seen: dict[str, Descriptor] = {}
        for d in (self.config, *self.layers):
            seen.setdefault(d.digest, d)
        return tuple(seen.values())

    @contextmanager
    def open_blob(self, digest: str) -> Iterator[BinaryIO]:
        with open_location(self.blobs[digest]) as f:
            yield f

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    def config_json(self) -> dict[str, Any]:
        data = json.loads(self.read_blob(self.config.digest))
        return data if isinstance(data, dict) else {}


def parse_manifest(body: bytes) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """(config, layers) of an image manifest; ValueError says what is wrong."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the manifest is not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schemaVersion") != 2:
        raise ValueError("the manifest is not a schema 2 image manifest")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ValueError("the manifest has no layers list")
    return Descriptor.from_json(data.get("config")), tuple(map(Descriptor.from_json, layers))


def make_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """An OCI image manifest, serialized the same way every time (it is content-addressed)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def platform_entry(entries: Sequence[object], platform: tuple[str, str]) -> object | None:
    """The entry of an index's `manifests` for platform (os, architecture), if any."""
    for entry in entries:
        plat = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(plat, dict) and (plat.get("os"), plat.get("architecture")) == platform:
            return entry
    return None


def image_from_files(config: bytes, layers: Sequence[Path], workdir: Path) -> Image:
    """An image from a config and layer files (tar, tar+gzip or tar+zstd, told by their first
    bytes); the config is written into workdir, the layers are used where they are."""
    config_desc = Descriptor(media.OCI_CONFIG, sha256_of(config), len(config))
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / config_desc.digest.replace(":", "-")
    config_path.write_bytes(config)
    blobs = {config_desc.digest: BlobLocation(config_path, 0, len(config))}
    descs = []
    for path in layers:
        size = os.stat(path).st_size
        loc = BlobLocation(path, 0, size)
        with path.open("rb") as f:
            head = f.read(8)
        digest, _ = digest_location(loc)
        descs.append(Descriptor(media.layer_type(head), digest, size))
        blobs[digest] = loc
    manifest = make_manifest(config_desc, descs)
    return Image(manifest, media.OCI_MANIFEST, config_desc, tuple(descs), blobs)
