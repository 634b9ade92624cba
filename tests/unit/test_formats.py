from __future__ import annotations

from pathlib import Path

import pytest

from assembler.errors import UsageError
from assembler.formats import FORMATS, ImageFormat, choose_format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.qcow2", ImageFormat.QCOW2),
        ("a.raw", ImageFormat.RAW),
        ("a.img", ImageFormat.RAW),
        ("a.vmdk", ImageFormat.VMDK),
        ("a.vhd", ImageFormat.VHD),
        ("a.VHDX", ImageFormat.VHDX),
    ],
)
def test_extension_decides_when_no_format(name: str, fmt: ImageFormat) -> None:
    assert choose_format(None, Path(name)) is fmt


def test_format_wins_and_must_agree() -> None:
    assert choose_format("vmdk", Path("out.vmdk")) is ImageFormat.VMDK
    assert choose_format("raw", Path("out")) is ImageFormat.RAW
    with pytest.raises(UsageError, match="conflicts"):
        choose_format("raw", Path("out.qcow2"))


def test_every_format_maps_to_glance() -> None:
    glance = {"qcow2", "raw", "vmdk", "vhd", "vhdx"}
    assert {FORMATS[f].glance_disk_format for f in ImageFormat} == glance
    assert FORMATS[ImageFormat.VHD].qemu_driver == "vpc"
