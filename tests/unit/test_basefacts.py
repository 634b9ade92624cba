"""Base facts are cached whole and checked on every read."""

from __future__ import annotations

from pathlib import Path

from assembler import basefacts


def test_saved_facts_load_and_a_damaged_file_is_not_trusted(tmp_path: Path) -> None:
    files = {"status": b"Package: a\n", "trusted/debian.gpg": b"key"}
    saved = basefacts.save("f" * 64, "/dev/sda1", {"/": "/dev/sda1"}, "amd64", files, tmp_path)
    loaded = basefacts.load("f" * 64, tmp_path)
    assert loaded == saved and loaded is not None
    assert loaded.status.read_bytes() == b"Package: a\n"
    assert [p.name for p in loaded.trusted()] == ["debian.gpg"]
    (tmp_path / ("f" * 64) / "trusted" / "debian.gpg").write_bytes(b"other")
    assert basefacts.load("f" * 64, tmp_path) is None
    assert basefacts.load("0" * 64, tmp_path) is None
    again = basefacts.save("f" * 64, "/dev/sda1", {"/": "/dev/sda1"}, "amd64", files, tmp_path)
    assert basefacts.load("f" * 64, tmp_path) == again
