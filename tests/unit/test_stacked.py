"""The top layer laid over a compressed flattening of the layers below it, with real qemu-img
and qemu-io on small disks: the result must read exactly as the chain does, whatever the top
holds over the lower data (new data, explicit zeros, clusters of zero bytes, part-written
clusters), stay compressed, and refuse what it cannot lay cluster for cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from assembler import stacked
from assembler.errors import CommandError

MiB = 1 << 20


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


def qemu_io(image: Path, *commands: str) -> None:
    argv: list[str | Path] = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    sh(*argv, image)


def overlay(path: Path, backing: Path, *opts: str, size: str = "") -> Path:
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", *opts, path,
       *([size] if size else []))  # fmt: skip
    return path


def flatten(chain: Path, out: Path) -> Path:
    sh("qemu-img", "convert", "-q", "-c", "-O", "qcow2", chain, out)
    return out


def identical(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", a, b], check=False).returncode == 0


def compressed_share(image: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "check", image], check=False, capture_output=True, text=True
    ).stdout
    return out.split("fragmented, ")[1].split("%")[0]


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    """Two layers below the top: a base with data, and a layer over it with more."""
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    qemu_io(base, "write -P 0x11 0 24M")
    mid = overlay(tmp_path / "mid.qcow2", base)
    qemu_io(mid, "write -P 0x33 20M 8M")
    return mid


def test_the_laid_over_output_reads_as_the_chain(lower: Path, tmp_path: Path) -> None:
    top = overlay(tmp_path / "top.qcow2", lower)
    qemu_io(
        top,
        "write -P 0x22 4M 1M",  # data over lower data
        "write -z 8M 1M",  # explicit zeros over lower data
        "write -P 0 12M 128k",  # clusters of zero bytes, as data, over lower data
        "write -P 0x44 16M 1000",  # a part-written cluster: the rest comes from below
        "write -P 0x55 40M 2M",  # data where nothing lay below
        "discard 22M 64k",  # a trimmed cluster over the middle layer's data
    )
    out = flatten(lower, tmp_path / "out.qcow2")
    held = stacked.lay_over(top, out)
    assert held >= 4 * MiB
    assert identical(out, top), "the output does not read as the chain"
    assert compressed_share(out) == "100.00"
    info = json.loads(sh("qemu-img", "info", "--output=json", out))
    assert "backing-filename" not in info


def test_a_top_that_holds_nothing_leaves_the_lower_file_as_it_was(
    lower: Path, tmp_path: Path
) -> None:
    top = overlay(tmp_path / "top.qcow2", lower)
    out = flatten(lower, tmp_path / "out.qcow2")
    before = out.read_bytes()
    assert stacked.lay_over(top, out) == 0
    assert out.read_bytes() == before  # the lower's compressed clusters, as they were
    assert identical(out, top)


def test_zeros_larger_than_one_request_are_split(
    lower: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stacked, "MAX_REQUEST", 1 * MiB)
    monkeypatch.setattr(stacked, "BATCH", 3)
    top = overlay(tmp_path / "top.qcow2", lower)
    qemu_io(top, "write -z 2M 10M")
    assert [e.length for e in stacked.held_extents(top)] == [MiB] * 10
    out = flatten(lower, tmp_path / "out.qcow2")
    stacked.lay_over(top, out)
    assert identical(out, top)


@pytest.mark.parametrize(
    "make_top",
    [
        pytest.param(
            lambda top, lower: overlay(top, lower, "-o", "cluster_size=128k"), id="clusters"
        ),
        pytest.param(lambda top, lower: overlay(top, lower, size="80M"), id="virtual-size"),
        pytest.param(
            lambda top, lower: overlay(top, lower, "-o", "extended_l2=on"), id="sub-clusters"
        ),
    ],
)
def test_what_cannot_be_laid_cluster_for_cluster_is_refused(
    lower: Path, tmp_path: Path, make_top: object
) -> None:
    top = make_top(tmp_path / "top.qcow2", lower)  # type: ignore[operator]
    out = flatten(lower, tmp_path / "out.qcow2")
    before = out.read_bytes()
    with pytest.raises(stacked.Unstackable):
        stacked.lay_over(top, out)
    assert out.read_bytes() == before  # refused before anything was written


def test_a_lower_file_that_is_not_an_image_fails_as_a_command(lower: Path, tmp_path: Path) -> None:
    top = overlay(tmp_path / "top.qcow2", lower)
    qemu_io(top, "write -P 0x22 0 1M")
    out = flatten(lower, tmp_path / "out.qcow2")
    broken = tmp_path / "broken.qcow2"
    shutil.copyfile(out, broken)
    with broken.open("r+b") as f:
        f.truncate(4096)  # header only: its tables point past the end
    with pytest.raises((CommandError, stacked.Unstackable)):
        stacked.lay_over(top, broken)
