from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from assembler.convert import convert
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


def _compressed_clusters(image: Path) -> int:
    out = subprocess.run(
        ["qemu-img", "check", "--output=json", image], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(out).get("compressed-clusters", 0))


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_qcow2_compression_is_real_and_lossless(tmp_path: Path, compression: str) -> None:
    """qemu-img on a small disk of compressible data: compressed clusters only when asked,
    the same content either way."""
    source = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", source, "8M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 4M", source],
        capture_output=True,
        check=True,
    )
    out = tmp_path / "out.qcow2"
    convert(source, ImageFormat.QCOW2, out, compression)
    compressed = _compressed_clusters(out)
    assert (compressed > 0) is (compression != "none")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", out], capture_output=True, text=True, check=True
        ).stdout
    )
    if compression == "zstd":
        assert info["format-specific"]["data"]["compression-type"] == "zstd"
    same = subprocess.run(["qemu-img", "compare", "-q", source, out], check=False)
    assert same.returncode == 0
    assert not list(tmp_path.glob("*.partial"))


def test_compression_applies_to_qcow2_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        convert(tmp_path / "x.qcow2", ImageFormat.RAW, tmp_path / "x.raw", "zlib")
