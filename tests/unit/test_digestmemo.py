"""A remembered sha256 is used only for the same file, unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from assembler import digestmemo


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_the_digest_is_remembered_and_renewed_by_any_change(tmp_path: Path) -> None:
    f = tmp_path / "base.img"
    f.write_bytes(b"a" * 100_000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert digestmemo.sha256_of(f) == want
    assert digestmemo.sha256_of(f) == want  # from the memo now
    st = f.stat()
    with f.open("r+b") as h:  # same size, mtime put back: ctime still moves
        h.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digestmemo.sha256_of(f) == hashlib.sha256(f.read_bytes()).hexdigest() != want


def test_a_damaged_memo_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "base.img"
    f.write_bytes(b"x")
    digestmemo.sha256_of(f)
    digestmemo._memo_path().write_text("{not json")
    assert digestmemo.sha256_of(f) == hashlib.sha256(b"x").hexdigest()
