"""The layer cache's mechanics on real qcow2 files: qemu-img makes the overlays and qemu-io writes
and reads data through the backing chains. No appliance: a layer's "steps" here are qemu-io
writes, which is all the cache sees of any build (a function that fills an overlay)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from assembler.layers import Entry, LayerCache, Parent

MIB = 1024 * 1024


def qemu_io(image: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)],
        capture_output=True,
        text=True,
        check=False,
    )


def reads(image: Path, pattern: int, offset_mib: int) -> bool:
    """True when qemu-io reads `pattern` at offset through the whole backing chain."""
    out = qemu_io(image, f"read -P {pattern:#x} {offset_mib}M 64k")
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout


@pytest.fixture
def base(tmp_path: Path) -> Parent:
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    assert qemu_io(path, "write -P 0x11 0 64k").returncode == 0
    return Parent(path, "qcow2", "base-sha256")


@pytest.fixture
def cache(tmp_path: Path) -> LayerCache:
    return LayerCache(tmp_path / "layers")


class Writer:
    """A layer's build: writes one pattern at one offset; counts how often it ran."""

    def __init__(self, pattern: int, offset_mib: int) -> None:
        self.pattern, self.offset, self.calls = pattern, offset_mib, 0

    def __call__(self, overlay: Path) -> dict[str, Any]:
        self.calls += 1
        result = qemu_io(overlay, f"write -P {self.pattern:#x} {self.offset}M 64k")
        assert result.returncode == 0, result.stderr
        return {"wrote": self.pattern}


def chain(
    cache: LayerCache,
    base: Parent,
    inputs_a: dict[str, Any],
    inputs_b: dict[str, Any],
    a: Callable[[Path], dict[str, Any]],
    b: Callable[[Path], dict[str, Any]],
    **a_opts: Any,
) -> tuple[Entry, bool, Entry, bool]:
    """Two layers, b on a, as a build uses them."""
    with ExitStack() as held:
        ea, hit_a = held.enter_context(cache.layer("a", base, inputs_a, a, **a_opts))
        parent = Parent(cache.overlay(ea), "qcow2", ea.ident)
        eb, hit_b = held.enter_context(cache.layer("b", parent, inputs_b, b))
        return ea, hit_a, eb, hit_b


def test_a_built_chain_holds_every_layer_s_data(cache: LayerCache, base: Parent) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    ea, hit_a, eb, hit_b = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    assert (hit_a, hit_b) == (False, False)
    top = cache.overlay(eb)
    assert reads(top, 0x11, 0) and reads(top, 0x41, 1) and reads(top, 0x42, 2)
    assert eb.parent == ea.ident and eb.record == {"wrote": 0x42}
    assert not reads(top, 0x99, 2)  # the reader can fail


def test_nothing_changed_builds_nothing(cache: LayerCache, base: Parent) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    first = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    again = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    assert (a.calls, b.calls) == (1, 1)
    assert (again[1], again[3]) == (True, True)
    assert again[2].ident == first[2].ident


def test_a_change_to_the_top_layer_reuses_the_one_below(cache: LayerCache, base: Parent) -> None:
    a, b, b2 = Writer(0x41, 1), Writer(0x42, 2), Writer(0x43, 2)
    ea, _, eb, _ = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    ea2, hit_a, eb2, hit_b = chain(cache, base, {"x": 1}, {"y": 2}, a, b2)
    assert (hit_a, hit_b) == (True, False)
    assert ea2.ident == ea.ident and eb2.key != eb.key
    assert (a.calls, b2.calls) == (1, 1)
    assert reads(cache.overlay(eb2), 0x43, 2) and reads(cache.overlay(eb2), 0x41, 1)
    # The first top layer is still there for a build asking for it again.
    assert chain(cache, base, {"x": 1}, {"y": 1}, a, b)[3] is True


def test_a_change_to_the_lower_layer_rebuilds_both(cache: LayerCache, base: Parent) -> None:
    a, a2, b = Writer(0x41, 1), Writer(0x51, 1), Writer(0x42, 2)
    _, _, eb, _ = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    _, hit_a, eb2, hit_b = chain(cache, base, {"x": 2}, {"y": 1}, a2, b)
    assert (hit_a, hit_b) == (False, False)
    assert b.calls == 2 and eb2.key != eb.key
    assert reads(cache.overlay(eb2), 0x51, 1)


def test_another_base_is_another_chain(cache: LayerCache, base: Parent) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    other = Parent(base.path, base.format, "another-sha256")
    _, hit_a, _, hit_b = chain(cache, other, {"x": 1}, {"y": 1}, a, b)
    assert (hit_a, hit_b) == (False, False)


def test_an_aged_package_layer_is_built_again_as_a_new_generation(
    cache: LayerCache, base: Parent
) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    ea, _, eb, _ = chain(cache, base, {"x": 1}, {"y": 1}, a, b, ages=True)
    # Within the maximum age: reused.
    assert chain(cache, base, {"x": 1}, {"y": 1}, a, b, ages=True, max_age_days=1)[1] is True
    # Make it two days old, as if built then.
    doc = json.loads((cache.root / f"{ea.key}.json").read_text())
    doc["created"] -= 2 * 86400
    (cache.root / f"{ea.key}.json").write_text(json.dumps(doc))
    ea2, hit_a, eb2, hit_b = chain(cache, base, {"x": 1}, {"y": 1}, a, b, ages=True, max_age_days=1)
    assert (hit_a, hit_b) == (False, False)
    assert ea2.key == ea.key and ea2.generation != ea.generation
    assert eb2.parent == ea2.ident and eb2.key != eb.key
    # The old generation stays until prune: a build may still stand on it.
    assert cache.overlay(ea).exists()
    removed = cache.prune()
    assert cache.overlay(ea).name in removed
    assert not cache.overlay(ea).exists() and cache.overlay(ea2).exists()
    # A layer without packages never ages.
    c = Writer(0x61, 3)
    with cache.layer("c", base, {}, c, max_age_days=0):
        pass
    with cache.layer("c", base, {}, c, max_age_days=0) as (_, hit):
        assert hit and c.calls == 1


def test_refresh_rebuilds_a_fresh_package_layer(cache: LayerCache, base: Parent) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    chain(cache, base, {"x": 1}, {"y": 1}, a, b, ages=True)
    _, hit_a, _, _ = chain(cache, base, {"x": 1}, {"y": 1}, a, b, ages=True, refresh=True)
    assert not hit_a and a.calls == 2


def test_a_failed_build_leaves_nothing(cache: LayerCache, base: Parent) -> None:
    def broken(overlay: Path) -> dict[str, Any]:
        Writer(0x41, 1)(overlay)
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError), cache.layer("a", base, {"x": 1}, broken):
        pass
    # Not even the link to the base the overlay was made on.
    assert [p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")] == []
    a = Writer(0x41, 1)
    with cache.layer("a", base, {"x": 1}, a) as (_, hit):
        assert not hit and a.calls == 1


def test_a_failed_build_keeps_the_base_link_another_build_lies_on(
    cache: LayerCache, base: Parent
) -> None:
    building, fail_now = threading.Event(), threading.Event()
    b = Writer(0x42, 2)

    def slow_b(overlay: Path) -> dict[str, Any]:
        building.set()
        assert fail_now.wait(30)
        return b(overlay)

    def b_layer() -> None:
        with cache.layer("b", base, {"y": 1}, slow_b):
            pass

    def broken(overlay: Path) -> dict[str, Any]:
        other.start()  # b on the same base, while this build (which made the link) runs
        assert building.wait(30)
        raise RuntimeError("step failed")

    other = threading.Thread(target=b_layer)
    with pytest.raises(RuntimeError), cache.layer("a", base, {"x": 1}, broken):
        pass
    assert (cache.root / base.file_name).is_symlink()  # b holds it: kept
    fail_now.set()
    other.join(30)
    (eb,) = cache.entries()
    assert (
        eb.name == "b" and reads(cache.overlay(eb), 0x42, 2) and reads(cache.overlay(eb), 0x11, 0)
    )


def test_a_layer_whose_parent_is_gone_is_a_miss(cache: LayerCache, base: Parent) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    ea, _, eb, _ = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    cache.overlay(ea).unlink()
    assert cache.entry(eb.key) is None
    _, hit_a, _, hit_b = chain(cache, base, {"x": 1}, {"y": 1}, a, b)
    assert (hit_a, hit_b) == (False, False)


def _build_in_child(root: str, base: str, counter: str, out: str, refresh: bool = False) -> None:
    """Runs in another process: builds layer "a" slowly, records which entry it got."""

    def slow(overlay: Path) -> dict[str, Any]:
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.5)
        Writer(0x41, 1)(overlay)
        return {}

    cache = LayerCache(Path(root))
    parent = Parent(Path(base), "qcow2", "base-sha256")
    with cache.layer("a", parent, {"x": 1}, slow, ages=True, refresh=refresh) as (e, _):
        Path(out).write_text(e.ident)


@pytest.mark.parametrize("refresh", [False, True], ids=["new", "refresh"])
def test_concurrent_builds_of_one_layer_build_it_once(
    cache: LayerCache, base: Parent, tmp_path: Path, refresh: bool
) -> None:
    """Two builds at once: one builds, the other waits and takes it. With --refresh too: a
    layer built after a build asked for it is as fresh as that build's own would be."""
    if refresh:
        with cache.layer("a", base, {"x": 1}, Writer(0x41, 1), ages=True):
            pass
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "counter"
    outs = [tmp_path / f"out{i}" for i in range(2)]
    procs = [
        ctx.Process(
            target=_build_in_child,
            args=(str(cache.root), str(base.path), str(counter), str(o), refresh),
        )
        for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "built\n"
    assert outs[0].read_text() == outs[1].read_text()


def test_a_refresh_does_not_wait_for_builds_on_the_old_generation(
    cache: LayerCache, base: Parent
) -> None:
    a = Writer(0x41, 1)
    with cache.layer("a", base, {"x": 1}, a, ages=True) as (old, _):
        # Another build (here: the same process, another lock handle) refreshes meanwhile.
        with cache.layer("a", base, {"x": 1}, Writer(0x51, 1), ages=True, refresh=True) as (
            new,
            hit,
        ):
            assert not hit and new.generation != old.generation
        # The old generation is still in use here: prune keeps it.
        assert cache.overlay(old).name not in cache.prune()
        assert reads(cache.overlay(old), 0x41, 1)
    assert cache.overlay(old).name in cache.prune()
    assert reads(cache.overlay(new), 0x51, 1)


def cli_prune(cache: LayerCache, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assembler", "cache", "prune", "--layer-cache", str(cache.root),
         *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )  # fmt: skip


def test_prune_leaves_layers_in_use_and_removes_the_rest(cache: LayerCache, base: Parent) -> None:
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    with cache.layer("a", base, {"x": 1}, a) as (held, _):
        unused = chain(cache, base, {"x": 2}, {"y": 1}, a, b)
        proc = cli_prune(cache, "--all")
        assert proc.returncode == 0, proc.stderr
        assert cache.overlay(held).exists()
        assert not cache.overlay(unused[0]).exists() and not cache.overlay(unused[2]).exists()
        assert "1 layers" in proc.stdout
    proc = cli_prune(cache, "--all")
    assert proc.returncode == 0 and not cache.overlay(held).exists()
    assert "0 layers" in proc.stdout


def test_prune_to_a_size_drops_the_least_recently_used(cache: LayerCache, base: Parent) -> None:
    old, new = Writer(0x41, 1), Writer(0x42, 2)
    with cache.layer("old", base, {}, old) as (e_old, _):
        pass
    with cache.layer("new", base, {}, new) as (e_new, _):
        pass
    past = time.time() - 3600
    os.utime(cache.root / f"{e_old.key}.json", (past, past))
    removed = cache.prune(max_bytes=cache.size(e_new))
    assert removed == [f"old {e_old.key[:12]}"]
    assert cache.overlay(e_new).exists()
    # Used again, a layer moves to the back of the queue.
    with cache.layer("old", base, {}, old) as (e_old, hit):
        assert not hit
    os.utime(cache.root / f"{e_new.key}.json", (past, past))
    assert cache.prune(max_bytes=cache.size(e_old)) == [f"new {e_new.key[:12]}"]


def test_cache_list_shows_every_layer(cache: LayerCache, base: Parent) -> None:
    chain(cache, base, {"x": 1}, {"y": 1}, Writer(0x41, 1), Writer(0x42, 2), ages=True)
    proc = subprocess.run(
        [sys.executable, "-m", "assembler", "cache", "list", "--layer-cache", str(cache.root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["KEY", "LAYER"]
    assert any(" a (ages) " in line for line in lines) and any(" b " in line for line in lines)
    assert lines[-1].startswith("2 layers")


def test_cache_command_rejects_a_missing_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "assembler", "cache", "list", "--layer-cache", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: layer cache") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "bytes-flipped"])
def test_a_damaged_layer_is_detected_and_built_again_with_what_lies_on_it(
    cache: LayerCache, base: Parent, damage: str
) -> None:
    a, b = Writer(0x22, 1), Writer(0x33, 2)
    ea, _, eb, _ = chain(cache, base, {"a": 1}, {"b": 1}, a, b)
    overlay = cache.overlay(ea)
    data = bytearray(overlay.read_bytes())
    if damage == "truncated":
        overlay.write_bytes(data[: len(data) // 2])
    else:
        at = data.index(bytes([0x22]) * 64)  # inside the data cluster the layer wrote
        data[at] ^= 0xFF
        overlay.write_bytes(bytes(data))
    assert cache.usable(ea.key) is None
    ea2, hit_a, eb2, hit_b = chain(cache, base, {"a": 1}, {"b": 1}, a, b)
    assert (hit_a, hit_b) == (False, False) and (a.calls, b.calls) == (2, 2)
    assert ea2.generation != ea.generation and eb2.key != eb.key  # b lies on the new a
    assert reads(cache.overlay(eb2), 0x22, 1) and reads(cache.overlay(eb2), 0x33, 2)
    # Intact now, and used as it is by the next build.
    _, hit_a, _, hit_b = chain(cache, base, {"a": 1}, {"b": 1}, a, b)
    assert (hit_a, hit_b) == (True, True) and a.calls == 2


def test_a_private_cache_s_layer_on_a_shared_one_reads_the_whole_chain(
    cache: LayerCache, base: Parent, tmp_path: Path
) -> None:
    """A dev build's private agent layer lies on the shared cache's layers: the chain below
    must resolve from the private directory too (qemu resolves backing names against the
    path it opened, so a link to an overlay with a backing file of its own would not)."""
    with cache.layer("a", base, {"x": 1}, Writer(0x41, 1)) as (ea, _):
        private = LayerCache(tmp_path / "private")
        parent = Parent(cache.overlay(ea), "qcow2", ea.ident)
        with private.layer("b", parent, {"y": 1}, Writer(0x42, 2)) as (eb, _):
            top = private.overlay(eb)
            assert reads(top, 0x11, 0) and reads(top, 0x41, 1) and reads(top, 0x42, 2)
            assert private.entry(eb.key) == eb


def test_a_chain_moved_to_another_directory_works_as_it_is(
    cache: LayerCache, tmp_path: Path
) -> None:
    """Relative backing names: the cache directory (and its base, beside it) moved elsewhere
    still reads every layer, with no rebase."""
    base_path = cache.root / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base_path, "64M"], check=True)
    assert qemu_io(base_path, "write -P 0x11 0 64k").returncode == 0
    base = Parent(base_path, "qcow2", "base-sha256")
    _, _, eb, _ = chain(cache, base, {"x": 1}, {"y": 1}, Writer(0x41, 1), Writer(0x42, 2))
    # The base's link names it by an absolute path: make it relative, as a runner's would be.
    link = cache.root / base.file_name
    link.unlink()
    link.symlink_to("base.qcow2")
    moved = tmp_path / "elsewhere"
    cache.root.rename(moved)
    top = moved / cache.overlay(eb).name
    assert reads(top, 0x11, 0) and reads(top, 0x41, 1) and reads(top, 0x42, 2)
