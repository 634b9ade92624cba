"""A failed or interrupted build leaves nothing behind: no output, no temporary file, no overlay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.image


def leftovers(out_dir: Path, cache: Path) -> list[Path]:
    """Anything in the output directory, the scratch space, or the layer cache but its lock
    files (a lock file is empty and stays, as flock wants)."""
    runs = cache / "trove-image-assembler" / "run"
    layers = cache / "trove-image-assembler" / "layers"
    found = list(out_dir.iterdir())
    if runs.exists():
        found += list(runs.iterdir())
    if layers.exists():
        found += [p for p in layers.iterdir() if p.suffix != ".lock"]
    return found


def isolated_cache(cache: Path) -> dict[str, str]:
    """Every cache of the build under `cache` (the session's layer cache too)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("ASSEMBLER_LAYER_CACHE", None)
    return env


def build_argv(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
        "--base", str(base), "-o", str(out), "--accel", "tcg", *extra,
    ]  # fmt: skip


def test_failing_step_is_one_line_and_leaves_nothing(debian_base: Path, tmp_path: Path) -> None:
    out_dir, cache = tmp_path / "out", tmp_path / "cache"
    out_dir.mkdir()
    # Nothing answers on 127.0.0.1:9: the host's apt fails to fetch the build's sources.
    proc = subprocess.run(
        build_argv(debian_base, out_dir / "x.qcow2", "--mirror", "http://127.0.0.1:9/debian"),
        capture_output=True, text=True, timeout=600, check=False,
        env=isolated_cache(cache),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step packages failed: resolving packages on the host"), (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert leftovers(out_dir, cache) == []


def test_interrupted_build_leaves_nothing(debian_base: Path, tmp_path: Path) -> None:
    out_dir, cache = tmp_path / "out", tmp_path / "cache"
    out_dir.mkdir()
    proc = subprocess.Popen(
        build_argv(debian_base, out_dir / "x.raw"),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=isolated_cache(cache),
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "step packages" in line:  # mid-build, the appliance busy installing
            break
        assert time.monotonic() < deadline, "the build never reached its package step"
    time.sleep(5)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert rest.strip().splitlines()[-1] == "error: interrupted"
    assert leftovers(out_dir, cache) == []
    # The appliance went down with the build.
    ps = subprocess.run(["pgrep", "-f", str(cache)], capture_output=True, text=True, check=False)
    assert ps.stdout.strip() == ""
