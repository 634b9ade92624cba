"""apt on the host for a guest: real apt-get against Debian's archive (plain HTTP, reachable
here), a guest's dpkg status made up for the test (an empty one: nothing installed, so
every dependency is fetched), the archive keys from the host's debian-archive-keyring."""

from __future__ import annotations

from pathlib import Path

import pytest

from assembler import basefacts, debrepack, hostapt
from assembler.distros import RELEASES, apt_sources
from assembler.errors import BuildError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SOURCES = apt_sources(RELEASES["bookworm"])
# Small and with a dependency chain of its own: libc6 and what it needs.
PACKAGES = ["hello"]


def facts(tmp: Path, keys: bool = True) -> basefacts.BaseFacts:
    files = {"status": b""}
    if keys:
        files["trusted/debian-archive-keyring.gpg"] = KEYRING.read_bytes()
    return basefacts.save("e" * 64, "/dev/sda1", {"/": "/dev/sda1"}, "amd64", files, tmp / "bf")


def scratch(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    return path


def test_the_host_resolves_fetches_and_repacks_then_reuses(tmp_path: Path) -> None:
    base = facts(tmp_path)
    cache = tmp_path / "packages"
    first = hostapt.fetch(base, SOURCES, PACKAGES, scratch(tmp_path, "a"), root=cache)
    names = {p.name for p in first.packages}
    assert {"hello", "libc6"} <= names
    for p in first.packages:
        assert p.deb.is_file() and p.repacked.is_file()
        members = [m for m, _, _ in debrepack.members(p.repacked.open("rb"))]
        assert members[2] == f"data.tar{'.zst' if hostapt.REPACK_CODEC == 'zstd' else ''}"
    stamps = {p.deb: p.deb.stat().st_mtime_ns for p in first.packages}
    repacked = {p.repacked: p.repacked.stat().st_mtime_ns for p in first.packages}
    second = hostapt.fetch(base, SOURCES, PACKAGES, scratch(tmp_path, "b"), root=cache)
    assert second == first
    # Nothing downloaded or repacked again.
    assert {p.deb: p.deb.stat().st_mtime_ns for p in second.packages} == stamps
    assert {p.repacked: p.repacked.stat().st_mtime_ns for p in second.packages} == repacked


def test_damaged_cache_entries_are_fetched_or_repacked_again(tmp_path: Path) -> None:
    base = facts(tmp_path)
    cache = tmp_path / "packages"
    first = hostapt.fetch(base, SOURCES, PACKAGES, scratch(tmp_path, "a"), root=cache)
    hello = next(p for p in first.packages if p.name == "hello")
    good_deb, good_plain = hello.deb.read_bytes(), hello.repacked.read_bytes()
    # Same size, other bytes: apt's hash check, not its size check, must catch it.
    with hello.deb.open("r+b") as f:
        f.seek(len(good_deb) // 2)
        f.write(bytes([good_deb[len(good_deb) // 2] ^ 0xFF]))
    with hello.repacked.open("r+b") as f:
        f.seek(len(good_plain) - 10)
        f.write(b"0123456789")
    again = hostapt.fetch(base, SOURCES, PACKAGES, scratch(tmp_path, "b"), root=cache)
    assert again == first
    assert hello.deb.read_bytes() == good_deb
    assert hello.repacked.read_bytes() == good_plain


def test_a_source_the_guest_does_not_trust_fails_in_one_line(tmp_path: Path) -> None:
    base = facts(tmp_path, keys=False)
    with pytest.raises(BuildError) as err:
        hostapt.fetch(base, SOURCES, PACKAGES, scratch(tmp_path, "a"), root=tmp_path / "p")
    assert "apt-get update" in str(err.value) and "\n" not in str(err.value)


def test_a_package_the_archive_lacks_is_a_build_error(tmp_path: Path) -> None:
    base = facts(tmp_path)
    with pytest.raises(BuildError) as err:
        hostapt.fetch(
            base, SOURCES, ["no-such-package-tia"], scratch(tmp_path, "a"), root=tmp_path / "p"
        )
    assert "no-such-package-tia" in str(err.value)


def test_the_host_s_own_apt_configuration_is_not_read(tmp_path: Path) -> None:
    opts = hostapt.apt_options(tmp_path / "area", tmp_path / "etc", tmp_path / "s", "amd64")
    paths = [o.split("=", 1)[1] for o in opts if "=/" in o]
    assert len(paths) >= 12 and all(p.startswith(str(tmp_path)) for p in paths)
