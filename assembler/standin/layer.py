"""A root tree packed as one deterministic gzip layer tar, with the digests OCI needs.

The same tree always gives the same bytes: names in sorted order, numeric owners and no owner
names, one fixed mtime, no gzip timestamp or file name. Device nodes and sockets are skipped (a
container runtime makes its own /dev); extended attributes are not carried.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # typeshed's name for any bytes-like object; not importable at run time
    from _typeshed import ReadableBuffer

# Every entry's mtime: the tree's own times are build times and would make each build differ.
LAYER_MTIME = 0
# zlib's default: level 9 took twice as long for a few per cent less.
GZIP_LEVEL = 6


@dataclass(frozen=True)
class LayerBlob:
    digest: str  # "sha256:<hex>" of the gzip bytes: the blob's name and the manifest's digest
    diff_id: str  # "sha256:<hex>" of the uncompressed tar: the image config's rootfs.diff_ids
    size: int  # bytes of the gzip blob


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it to `out`."""

    def __init__(self, out: _Sink) -> None:
        super().__init__()
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        chunk = bytes(data)
        self.sha.update(chunk)
        self.size += len(chunk)
        self.out.write(chunk)
        return len(chunk)


def pack_layer(root: Path, output: Path) -> LayerBlob:
    """Write root's tree to `output` as a gzip tar layer; the tree's root itself is not an entry."""
    with open(output, "wb") as raw:
        compressed = _Hashing(raw)
        # filename="" and mtime=0 keep the gzip header free of anything build-specific.
        with gzip.GzipFile("", "wb", GZIP_LEVEL, compressed, mtime=0) as gz:
            uncompressed = _Hashing(gz)
            # PAX for long names and big files; no pax header appears unless one is needed.
            with tarfile.open(mode="w|", fileobj=uncompressed, format=tarfile.PAX_FORMAT) as tar:
                for rel in _walk(root):
                    _add(tar, root, rel)
    return LayerBlob(
        digest=f"sha256:{compressed.sha.hexdigest()}",
        diff_id=f"sha256:{uncompressed.sha.hexdigest()}",
        size=compressed.size,
    )


def _walk(root: Path, rel: str = "") -> list[str]:
    """Relative paths below root, each directory before its contents, siblings sorted by name."""
    out: list[str] = []
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        out.append(path)
        # Never follow a symlink: it points into the image, not into the build host.
        if entry.is_dir(follow_symlinks=False):
            out.extend(_walk(root, path))
    return out


def _add(tar: tarfile.TarFile, root: Path, rel: str) -> None:
    path = root / rel
    mode = os.lstat(path).st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        return
    # gettarinfo also turns a second name of an inode into a hard link to the first one added.
    info = tar.gettarinfo(str(path), arcname=rel)
    info.mtime = LAYER_MTIME
    info.uname = ""
    info.gname = ""
    if info.isreg():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)
