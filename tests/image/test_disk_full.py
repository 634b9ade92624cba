"""The disk filling up, on a small tmpfs the test mounts (never the machine's own disk): the
build fails with one `error:` line and exit 3 instead of hanging (QEMU would pause the
appliance), nothing is left at the output, and the caches stay consistent. Real builds."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from assembler.errors import EXIT_NO_SPACE
from assembler.layers import LayerCache
from assembler.paths import cache_dir
from tests.builds import Built, run_cli
from tests.image.test_killed_builds import partials

pytestmark = pytest.mark.image

_count = itertools.count()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts tmpfs filesystems of a given size (the suite runs as root), unmounted after."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"small-{next(_count)}"
        where.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            check=True,
        )
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def build(base: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
        "--base", str(base), "-o", str(out), "--accel", "tcg", "--no-dev-mode", *extra,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)


def assert_one_line_no_space(proc: subprocess.CompletedProcess[str], where: Path) -> None:
    assert proc.returncode == EXIT_NO_SPACE, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr[-3000:]
    assert errors[0].startswith(f"error: no space left on the filesystem of {where}"), errors
    assert "Traceback" not in proc.stderr


@pytest.mark.full  # a system layer's appliance and packages until the room runs out: ~2 min
def test_layer_cache_filling_up_mid_layer(
    debian_base: Path, small_fs: Callable[[str], Path]
) -> None:
    fs = small_fs("160M")  # the packages alone need more
    layers = fs / "layers"
    proc = build(debian_base, fs / "out.qcow2", "--layer-cache", str(layers))
    assert_one_line_no_space(proc, layers)
    assert "building the system layer" in proc.stderr
    assert sorted(p.name for p in fs.iterdir()) == ["layers"]  # no output, no partial of it
    assert LayerCache(layers).entries() == []
    assert [p for p in layers.iterdir() if p.suffix != ".lock"] == []
    assert partials(cache_dir(), layers) == []


def test_output_filling_up_in_the_convert(
    raw_production: Built, small_fs: Callable[[str], Path], session_layer_cache: Path
) -> None:
    fs = small_fs("64M")
    out = fs / "prod.vhd"  # raw_production's layers, a format nobody converted them to yet
    proc = run_cli(*raw_production.args_to(out), "--format", "vhd", env=raw_production.env)
    assert_one_line_no_space(proc, out.parent)
    assert "while converting to vhd" in proc.stderr
    assert list(fs.iterdir()) == []
    cache = LayerCache(session_layer_cache)
    assert all(cache.usable(e.key) is not None for e in cache.entries())
    assert partials(cache_dir(), session_layer_cache) == []


def test_output_filling_up_in_the_copy_of_a_cached_image(
    raw_production: Built, small_fs: Callable[[str], Path]
) -> None:
    fs = small_fs("64M")
    out = fs / "prod.raw"  # raw_production itself: the output cache has it, and copies it
    proc = run_cli(*raw_production.args_to(out), env=raw_production.env)
    assert_one_line_no_space(proc, out.parent)
    assert "while copying the cached image to the output" in proc.stderr
    assert list(fs.iterdir()) == []
    assert partials(cache_dir()) == []
