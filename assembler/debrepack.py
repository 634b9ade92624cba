"""Repack a .deb so dpkg under emulation does not decompress xz: the data member is decompressed
on the host (natively, ~10x faster than under TCG) and stored as data.tar or data.tar.zst.

A .deb is an ar archive: debian-binary, control.tar.*, data.tar.*. Only the data member
changes; dpkg reads data.tar uncompressed, and zstd since 1.21.18 (Debian 12) or Ubuntu's
1.21.1ubuntu2 (22.04). The original was verified by apt against its index before it gets here.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from assembler import leftovers
from assembler.run import die_with_parent

MAGIC = b"!<arch>\n"
HEADER = 60
CHUNK = 1 << 20

DECOMPRESSORS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


class DebError(ValueError):
    pass


def members(f: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each ar member."""
    if f.read(len(MAGIC)) != MAGIC:
        raise DebError("not an ar archive")
    while True:
        header = f.read(HEADER)
        if not header:
            return
        if len(header) != HEADER or header[58:60] != b"`\n":
            raise DebError("truncated or malformed ar header")
        name = header[:16].decode("ascii").rstrip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        offset = f.tell()
        yield name, offset, size
        f.seek(offset + size + (size & 1))


def _header(name: str, size: int) -> bytes:
    # mtime 0, owner 0:0, mode 100644: the repack of the same deb is the same bytes.
    text = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{size:<10}`\n"
    assert len(text) == HEADER
    return text.encode("ascii")


def _copy(src: IO[bytes], dst: IO[bytes], size: int | None = None) -> None:
    left = size
    while left is None or left > 0:
        chunk = src.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            if left:
                raise DebError("member shorter than its header says")
            return
        dst.write(chunk)
        if left is not None:
            left -= len(chunk)


class _Window:
    """A member's bytes as a file."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self.f, self.left = f, size
        f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def repack(src: Path, dest: Path, codec: str) -> None:
    """Write `src` with its data member as data.tar (codec "none") or data.tar.zst ("zstd")."""
    if codec not in ("none", "zstd"):
        raise ValueError(f"unknown codec {codec}")
    tmp = leftovers.partial(dest)
    try:
        with src.open("rb") as f, tmp.open("wb") as out:
            out.write(MAGIC)
            for name, offset, size in list(members(f)):
                if not name.startswith("data.tar"):
                    f.seek(offset)
                    out.write(_header(name, size))
                    _copy(f, out, size)
                else:
                    _write_data(f, offset, size, name, out, codec, tmp)
                if out.tell() & 1:
                    out.write(b"\n")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _write_data(
    f: BinaryIO, offset: int, size: int, name: str, out: IO[bytes], codec: str, tmp: Path
) -> None:
    suffix = name[len("data.tar") :]
    plain = tmp.with_name(tmp.name + ".data")  # still a partial's name, for leftovers.sweep
    try:
        with plain.open("wb") as p:
            window = _Window(f, offset, size)
            if suffix == "":
                _copy(window, p)  # type: ignore[arg-type]
            elif suffix == ".zst":
                proc = subprocess.run(
                    ["zstd", "-q", "-d", "-c"],
                    input=window.read(),
                    stdout=p,
                    check=False,
                    preexec_fn=die_with_parent(),
                )
                if proc.returncode:
                    raise DebError("zstd could not decompress the data member")
            elif suffix in DECOMPRESSORS:
                with DECOMPRESSORS[suffix](window) as d:  # type: ignore[operator]
                    _copy(d, p)
            else:
                raise DebError(f"unknown data member {name}")
        if codec == "zstd":
            packed = plain.with_suffix(".zst")
            subprocess.run(
                ["zstd", "-q", "-1", "-T1", "-f", plain, "-o", packed],
                check=True,
                preexec_fn=die_with_parent(),
            )
            plain.unlink()
            shutil.move(packed, plain)
            member = "data.tar.zst"
        else:
            member = "data.tar"
        out.write(_header(member, plain.stat().st_size))
        with plain.open("rb") as p:
            _copy(p, out)
    finally:
        plain.unlink(missing_ok=True)
        plain.with_suffix(".zst").unlink(missing_ok=True)
