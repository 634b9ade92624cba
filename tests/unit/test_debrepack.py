"""Repacked .debs: what dpkg-deb reads from them is what it read from the original."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from assembler import debrepack


def make_deb(tmp: Path, compression: str = "xz") -> Path:
    """A real .deb built by dpkg-deb, with files in its data member."""
    root = tmp / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: tia-test\nVersion: 1:1.0-1\nArchitecture: all\n"
        "Maintainer: test <t@example.invalid>\nDescription: test\n"
    )
    (root / "usr" / "share" / "tia").mkdir(parents=True)
    (root / "usr" / "share" / "tia" / "data").write_bytes(bytes(range(256)) * 4000)
    (root / "usr" / "share" / "tia" / "odd").write_bytes(b"x" * 7)  # an odd-sized member
    deb = tmp / f"tia-test-{compression}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "-b", root, deb],
        check=True, capture_output=True,
    )  # fmt: skip
    return deb


def listing(deb: Path) -> tuple[str, str]:
    contents = subprocess.run(["dpkg-deb", "-c", deb], check=True, capture_output=True, text=True)
    control = subprocess.run(["dpkg-deb", "-f", deb], check=True, capture_output=True, text=True)
    return contents.stdout, control.stdout


@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("compression", ["xz", "gzip"])
def test_a_repacked_deb_has_the_same_files_and_control(
    tmp_path: Path, codec: str, compression: str
) -> None:
    deb = make_deb(tmp_path, compression)
    out = tmp_path / "out.deb"
    debrepack.repack(deb, out, codec)
    assert listing(out) == listing(deb)
    names = [name for name, _, _ in debrepack.members(out.open("rb"))]
    assert names[0] == "debian-binary" and names[1].startswith("control.tar")
    assert names[2] == ("data.tar" if codec == "none" else "data.tar.zst")
    extracted = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", out, extracted], check=True)
    assert (extracted / "usr/share/tia/data").read_bytes() == bytes(range(256)) * 4000
    again = tmp_path / "again.deb"
    debrepack.repack(deb, again, codec)
    assert again.read_bytes() == out.read_bytes()  # the same bytes each time


def test_a_file_that_is_not_a_deb_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"!<arch>\nnot a header")
    out = tmp_path / "out.deb"
    with pytest.raises(debrepack.DebError):
        debrepack.repack(bad, out, "none")
    assert list(tmp_path.iterdir()) == [bad]
