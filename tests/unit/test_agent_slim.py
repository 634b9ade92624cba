"""Slimming the venv (assembler/agent/slim.py) on a small site-packages tree."""

from __future__ import annotations

import csv
from pathlib import Path

from assembler.agent.slim import prune_records, slim_venv

RECORD = """\
pkg/__init__.py,sha256=x,1
pkg/tests/__init__.py,sha256=x,1
pkg/tests/data/key.pem,sha256=x,1
pkg/sub/test/test_a.py,sha256=x,1
pkg/testing/__init__.py,sha256=x,1
pkg/test.py,sha256=x,1
pkg/fixtures.pem,sha256=x,1
pkg-1.0.dist-info/RECORD,,
../../../bin/pkg-run,sha256=x,1
"""


def _tree(site: Path) -> None:
    for line in RECORD.splitlines():
        path = (site / line.split(",")[0]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    (site / "pkg-1.0.dist-info" / "RECORD").write_text(RECORD)
    (site / "pkg-1.0.dist-info" / "entry_points.txt").write_text("[t]\nx = pkg.tests:X\n")
    (site / "pkg-1.0.dist-info" / "licenses" / "tests").mkdir(parents=True)
    (site / "tests").mkdir()  # a top-level test package some wheels install
    (site / "tests" / "conftest.py").write_text("x\n")


def test_test_suites_go_and_nothing_else(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    _tree(site)
    slimmed = slim_venv(site)
    assert slimmed.dirs == ("pkg/sub/test", "pkg/tests", "tests")
    assert (slimmed.files, slimmed.bytes) == (4, 8)
    assert not (site / "pkg" / "tests").exists() and not (site / "pkg" / "sub" / "test").exists()
    assert (site / "pkg" / "sub").is_dir() and not (site / "tests").exists()
    # Libraries named like tests, modules, metadata and what lies outside site-packages stay.
    for kept in ("pkg/testing/__init__.py", "pkg/test.py", "pkg-1.0.dist-info/entry_points.txt"):
        assert (site / kept).is_file(), kept
    assert (site / "pkg-1.0.dist-info" / "licenses" / "tests").is_dir()
    assert (tmp_path / "venv" / "bin" / "pkg-run").is_file()
    with (site / "pkg-1.0.dist-info" / "RECORD").open() as f:
        listed = [row[0] for row in csv.reader(f)]
    assert listed == [
        "pkg/__init__.py",
        "pkg/testing/__init__.py",
        "pkg/test.py",
        "pkg/fixtures.pem",
        "pkg-1.0.dist-info/RECORD",
        "../../../bin/pkg-run",
    ]
    assert slimmed.manifest() == {"removed_dirs": 3, "removed_files": 4, "bytes": 8}


def test_records_lose_single_files_too(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _tree(site)
    prune_records(site, ["pkg/fixtures.pem"])
    text = (site / "pkg-1.0.dist-info" / "RECORD").read_text()
    assert "pkg/fixtures.pem" not in text and "pkg/__init__.py" in text
    before = text
    prune_records(site, [])
    assert (site / "pkg-1.0.dist-info" / "RECORD").read_text() == before
