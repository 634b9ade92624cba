"""Output formats: how qemu-img writes each and what Glance calls it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from assembler.errors import UsageError


class ImageFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"
    VMDK = "vmdk"
    VHD = "vhd"
    VHDX = "vhdx"


@dataclass(frozen=True)
class FormatInfo:
    extensions: tuple[str, ...]
    qemu_driver: str
    qemu_options: tuple[str, ...]
    glance_disk_format: str
    # qemu-img convert -W: out-of-order writes are faster, but stream formats need order.
    out_of_order: bool = False


FORMATS: dict[ImageFormat, FormatInfo] = {
    # compat=1.1 is what every QEMU a compute node runs since 1.1 reads.
    ImageFormat.QCOW2: FormatInfo((".qcow2",), "qcow2", ("compat=1.1",), "qcow2", True),
    ImageFormat.RAW: FormatInfo((".raw", ".img"), "raw", (), "raw", True),
    # streamOptimized is what Glance's VMware driver and vSphere import expect; QEMU reads it too.
    ImageFormat.VMDK: FormatInfo(
        (".vmdk",), "vmdk", ("subformat=streamOptimized", "adapter_type=lsilogic"), "vmdk"
    ),
    # force_size keeps the virtual size exact instead of rounding to a CHS geometry, which
    # Hyper-V and Azure otherwise reject.
    ImageFormat.VHD: FormatInfo((".vhd",), "vpc", ("subformat=dynamic", "force_size=on"), "vhd"),
    ImageFormat.VHDX: FormatInfo((".vhdx",), "vhdx", ("subformat=dynamic",), "vhdx"),
}


def format_from_extension(path: Path) -> ImageFormat | None:
    suffix = path.suffix.lower()
    for fmt, info in FORMATS.items():
        if suffix in info.extensions:
            return fmt
    return None


def choose_format(requested: str | None, output: Path | None) -> ImageFormat:
    """`--format` wins; else the output's extension; a conflict or an unknown one is an error."""
    from_ext = format_from_extension(output) if output else None
    if requested is not None:
        try:
            fmt = ImageFormat(requested.lower())
        except ValueError:
            raise UsageError(
                f"unknown format {requested!r}; choose one of {', '.join(ImageFormat)}"
            ) from None
        if output is not None and output.suffix and from_ext is None:
            raise UsageError(
                f"output {output} has an unknown extension {output.suffix!r} for format {fmt}"
            )
        if from_ext is not None and from_ext is not fmt:
            raise UsageError(f"--format {fmt} conflicts with the output's extension {output}")
        return fmt
    if output is None:
        return ImageFormat.QCOW2
    if from_ext is None:
        known = ", ".join(e for info in FORMATS.values() for e in info.extensions)
        raise UsageError(f"cannot tell the format of {output}: use one of {known} or --format")
    return from_ext
