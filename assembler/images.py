"""What a disk image file is, as qemu-img sees it, checked before anything boots or builds on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assembler.convert import image_info
from assembler.errors import AssemblerError, UsageError

# qemu-img's names of the formats this project reads and writes.
DISK_FORMATS = frozenset({"qcow2", "raw", "vmdk", "vpc", "vhdx"})


@dataclass(frozen=True)
class DiskImage:
    path: Path
    format: str
    virtual_size: int
    backing_file: str | None


def _has_partition_table(path: Path) -> bool:
    """A raw file is anything; a disk image has an MBR signature (GPT keeps a protective MBR)."""
    with path.open("rb") as f:
        sector = f.read(512)
    return len(sector) == 512 and sector[510:512] == b"\x55\xaa"


def inspect_disk(path: Path, what: str = "image") -> DiskImage:
    """The image's format and size; UsageError when it is missing or not a disk image."""
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        info = image_info(path)
    except AssemblerError as exc:
        raise UsageError(f"{what} {path} is not readable as a disk image: {exc}") from exc
    fmt = str(info.get("format"))
    if fmt not in DISK_FORMATS or (fmt == "raw" and not _has_partition_table(path)):
        raise UsageError(f"{what} {path} is not a disk image (qemu-img sees {fmt})")
    size = info.get("virtual-size")
    backing = info.get("backing-filename")
    return DiskImage(
        path,
        fmt,
        int(size) if isinstance(size, int) else 0,
        str(backing) if backing else None,
    )
