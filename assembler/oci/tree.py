"""The files of a layout or archive, read in place: a directory, or an uncompressed tar whose
members are located by offset (a docker save tar is never extracted to be read)."""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import Protocol

from assembler.errors import UsageError
from assembler.oci.image import BlobLocation, open_location

_LINK_DEPTH = 8  # old docker save tars link duplicate layers to one another


def malformed(where: Path, why: str) -> UsageError:
    return UsageError(f"not a docker save archive or OCI layout: {where}: {why}")


class Tree(Protocol):
    where: Path

    def locate(self, name: str) -> BlobLocation | None: ...


def read_small(tree: Tree, name: str, limit: int = 16 * 1024 * 1024) -> bytes:
    loc = tree.locate(name)
    if loc is None:
        raise malformed(tree.where, f"{name} is missing")
    if loc.size > limit:
        raise malformed(tree.where, f"{name} is too large ({loc.size} bytes)")
    with open_location(loc) as f:
        return f.read()


class DirTree:
    def __init__(self, root: Path) -> None:
        self.where = root

    def locate(self, name: str) -> BlobLocation | None:
        path = self.where / name
        if ".." in Path(name).parts or not path.is_file():
            return None
        return BlobLocation(path, 0, os.stat(path).st_size)


class TarTree:
    def __init__(self, tar_path: Path) -> None:
        self.where = tar_path
        with tar_path.open("rb") as f:
            head = f.read(6)
        if head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ")):
            raise malformed(tar_path, "it is compressed; decompress it first")
        try:
            with tarfile.open(tar_path, "r:") as tar:
                self._members = {_norm(m.name): m for m in tar.getmembers()}
        except (tarfile.TarError, OSError) as exc:
            raise malformed(tar_path, f"not a tar ({exc})") from exc

    def locate(self, name: str) -> BlobLocation | None:
        name = _norm(name)
        for _ in range(_LINK_DEPTH):
            member = self._members.get(name)
            if member is None:
                return None
            if member.isfile():
                return BlobLocation(self.where, member.offset_data, member.size)
            if member.islnk():
                name = _norm(member.linkname)
            elif member.issym():
                name = _norm(posixpath.join(posixpath.dirname(name), member.linkname))
            else:
                return None
        return None


def _norm(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")
