"""The output cache: an unchanged rebuild is a checked copy; a damaged entry is never used."""

from __future__ import annotations

import os
from pathlib import Path

from assembler.manifest import sha256_file
from assembler.outputs import OutputCache, output_key


def test_keys_differ_by_layer_format_and_compression() -> None:
    keys = {
        output_key("a.1", "qcow2", "zlib"),
        output_key("a.2", "qcow2", "zlib"),
        output_key("a.1", "raw", "none"),
        output_key("a.1", "qcow2", "zstd"),
    }
    assert len(keys) == 4


def test_a_stored_output_comes_back_as_an_independent_copy(tmp_path: Path) -> None:
    cache = OutputCache(tmp_path / "outputs")
    first = tmp_path / "first.qcow2"
    first.write_bytes(os.urandom(3 << 20))
    key = output_key("layer.1", "qcow2", "zlib")
    cache.store(key, first, sha256_file(first), "layer.1")
    second = tmp_path / "second.qcow2"
    stored = cache.copy_to(key, second)
    assert stored is not None and stored.sha256 == sha256_file(first)
    assert second.read_bytes() == first.read_bytes()
    assert second.stat().st_ino != first.stat().st_ino
    assert cache.copy_to(output_key("other.1", "qcow2", "zlib"), tmp_path / "x") is None


def test_an_output_edited_in_place_is_caught_and_dropped(tmp_path: Path) -> None:
    cache = OutputCache(tmp_path / "outputs")
    first = tmp_path / "first.raw"
    first.write_bytes(b"a" * 100_000)
    key = output_key("layer.1", "raw", "none")
    cache.store(key, first, sha256_file(first), "layer.1")
    with first.open("r+b") as f:  # the cache's copy is a hard link to it
        f.seek(50_000)
        f.write(b"b")
    out = tmp_path / "out.raw"
    assert cache.copy_to(key, out) is None
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    assert not list((tmp_path / "outputs").iterdir())


def test_a_copied_entry_outlives_edits_to_the_file_it_came_from(tmp_path: Path) -> None:
    """link=False: the caller writes over its file afterwards (the stacked output does)."""
    cache = OutputCache(tmp_path / "outputs")
    first = tmp_path / "lower.qcow2"
    first.write_bytes(b"a" * 100_000)
    digest = sha256_file(first)
    key = output_key("layer.1", "qcow2-lower", "zlib")
    cache.store(key, first, digest, "layer.1", link=False)
    with first.open("r+b") as f:
        f.write(b"b")
    stored = cache.copy_to(key, tmp_path / "again.qcow2")
    assert stored is not None and stored.sha256 == digest


def test_prune_drops_outputs_of_layers_gone(tmp_path: Path) -> None:
    cache = OutputCache(tmp_path / "outputs")
    for ident in ("kept.1", "gone.1"):
        f = tmp_path / ident
        f.write_bytes(ident.encode())
        cache.store(output_key(ident, "raw", "none"), f, sha256_file(f), ident)
    assert cache.prune({"kept.1"}) == [f"output {output_key('gone.1', 'raw', 'none')[:12]}"]
    assert cache.copy_to(output_key("kept.1", "raw", "none"), tmp_path / "o") is not None
