"""What a killed build leaves is found by its dead pid and removed; a live build's is kept.
Real files, real processes (a child that has exited stands for a killed build)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assembler import leftovers


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "trove-image-assembler"


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_partial_names_carry_the_pid() -> None:
    p = leftovers.partial(Path("/x/out.qcow2"))
    assert p == Path(f"/x/.out.qcow2.{os.getpid()}.partial")
    assert (
        leftovers.partial(Path("/x/k.123"), ".qcow2").name == f".k.123.{os.getpid()}.partial.qcow2"
    )
    m = leftovers.PARTIAL.match(p.name)
    assert m is not None and int(m["pid"]) == os.getpid()
    assert leftovers.PARTIAL.match("out.qcow2") is None
    assert leftovers.PARTIAL.match(".out.qcow2.partial") is None  # no pid: not ours


def test_sweep_removes_the_dead_and_keeps_the_living(_cache: Path, tmp_path: Path) -> None:
    dead, live = dead_pid(), os.getppid()  # pytest's parent is running
    layers = _cache / "layers"
    layers.mkdir(parents=True)
    gone = [
        layers / f".abc.17f.{dead}.partial.qcow2",
        _cache / "wheelhouses" / f".key.{dead}.partial",
        _cache / "run" / str(dead),
        _cache / "bases" / f".k.qcow2.{dead}.partial",
    ]
    kept = [
        layers / f".abc.18f.{live}.partial.qcow2",  # another build, still at work
        layers / "abc.17f.qcow2",
        _cache / "run" / str(live),
        _cache / "wheelhouses" / "key" / "wheels" / f".deep.{dead}.partial",  # inside an entry
    ]
    for path in gone[1:3] + kept[2:]:
        path.mkdir(parents=True)
    for path in [gone[0], gone[3], *kept[:2]]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (gone[1] / "wheels").mkdir()  # a directory goes whole
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mine, other = out_dir / f".img.raw.{dead}.partial", out_dir / f".notes.{dead}.partial"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    removed = leftovers.sweep(output=out_dir / "img.raw")
    assert sorted(removed) == sorted([*gone, mine])
    assert not any(p.exists() for p in gone) and not mine.exists()
    assert all(p.exists() for p in kept)
    assert other.exists()  # the output directory is the user's: only that output's partials go


def test_sweep_covers_a_layer_cache_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "layers"
    (elsewhere / "outputs").mkdir(parents=True)
    stale = elsewhere / "outputs" / f".k.{dead_pid()}.partial"
    stale.write_bytes(b"x")
    assert leftovers.sweep(extra=[elsewhere]) == [stale]


def test_release_removes_the_run_directory(_cache: Path) -> None:
    run = leftovers.run_dir()
    assert run == _cache / "run" / str(os.getpid())
    (run / "scratch").mkdir()
    leftovers.release()
    assert not run.exists()


CHILD = """
import subprocess, sys
from assembler.run import die_with_parent
p = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
print(p.pid, flush=True)
sys.stdin.read()
"""


def test_a_child_dies_with_a_build_killed_outright() -> None:
    build = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert build.stdout is not None
    sleeper = int(build.stdout.readline())
    assert leftovers.alive(sleeper)
    build.kill()  # SIGKILL: no cleanup of ours runs
    build.wait()
    deadline = time.monotonic() + 10
    while leftovers.alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leftovers.alive(sleeper)
