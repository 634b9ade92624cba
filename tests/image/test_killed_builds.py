"""SIGKILL at each stage of a build: the same build run again succeeds, nothing of the killed
one remains beside the output or in the caches, and none of its children (the appliance,
qemu-img) outlives it. Real builds, real processes, the base served by a real HTTP server on
127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assembler import leftovers
from assembler.layers import LayerCache
from assembler.paths import cache_dir
from tests.builds import Built

pytestmark = pytest.mark.image

CHUNK = 1 << 20


class _SlowFile(ThreadingHTTPServer):
    """One file at /base.qcow2, with Range support, `delay_s` between 1 MiB chunks."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.path = path
        self.delay_s = 0.0


class _Handler(BaseHTTPRequestHandler):
    server: _SlowFile

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        size = self.server.path.stat().st_size
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with self.server.path.open("rb") as f:
            f.seek(start)
            try:
                while chunk := f.read(CHUNK):
                    self.wfile.write(chunk)
                    time.sleep(self.server.delay_s)
            except (BrokenPipeError, ConnectionResetError):  # the build was killed
                pass


@pytest.fixture
def served(debian_base: Path) -> Iterator[tuple[_SlowFile, str, str]]:
    server = _SlowFile(debian_base)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    digest = hashlib.sha256()
    with debian_base.open("rb") as f:
        while chunk := f.read(8 * CHUNK):
            digest.update(chunk)
    try:
        yield server, f"http://127.0.0.1:{server.server_port}/base.qcow2", digest.hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def descendants(pid: int) -> dict[int, str]:
    """Every process under pid, by pid, with its command name."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        parents.setdefault(int(rest.split()[1]), []).append(int(proc.name))
        names[int(proc.name)] = name
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = names[child]
            todo.append(child)
    return found


def partials(*dirs: Path) -> list[Path]:
    """Every file or directory named as a partial of ours (or a run directory) under dirs."""
    found: list[Path] = []
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            for name in subdirs + files:
                if leftovers.PARTIAL.match(name):
                    found.append(Path(root) / name)
    runs = cache_dir() / "run"
    if runs.exists():
        # Not those of running processes (this one, or another build at work).
        found += [p for p in runs.iterdir() if not leftovers.alive(int(p.name))]
    return found


@dataclass(frozen=True)
class Stage:
    name: str
    # When to kill: given the build's stderr so far, whether the stage is under way.
    reached: Callable[[list[str]], bool]
    child: str | None  # a process that must be running under the build at the kill
    after_s: float = 1.0


def _line(text: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(text in line for line in lines)


def _downloading(lines: list[str]) -> bool:
    parts = list((cache_dir() / "downloads").rglob("*.part"))
    return any(p.stat().st_size >= 16 * CHUNK for p in parts)


DOWNLOAD = Stage("download", _downloading, None, after_s=0)
SYSTEM = Stage("system layer", _line("step packages"), "qemu-system-x86", after_s=5)
CONFIG = Stage("config layer", _line("step guest-user"), "qemu-system-x86")
AGENT = Stage("agent layer", _line("step agent-venv"), "qemu-system-x86")
CONVERT = Stage("convert", _line("converting to"), "qemu-img", after_s=0.5)


def kill_during(argv: list[str], stage: Stage, timeout_s: float = 900) -> None:
    """Run the build until the stage is under way, SIGKILL it, and see its children gone."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not stage.reached(lines):
            if proc.poll() is not None:
                pytest.fail(f"the build ended before its {stage.name}:\n" + "".join(lines[-20:]))
            assert time.monotonic() < deadline, f"the build never reached its {stage.name}"
            time.sleep(0.05)
        time.sleep(stage.after_s)
        tree = descendants(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    if stage.child is not None:
        assert stage.child in tree.values(), (stage.name, tree)
    deadline = time.monotonic() + 20  # libguestfs's recovery process looks once a second
    while (running := [p for p in tree if leftovers.alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running == [], {p: tree[p] for p in running}
    reader.join(5)


def argv_for(base_url: str, sha: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
        "--base", base_url, "--sha256", sha, "-o", str(out), "--accel", "tcg", *extra,
    ]  # fmt: skip


def check_clean(out: Path, layer_cache: Path) -> None:
    assert partials(cache_dir(), layer_cache, out.parent) == []
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, f"{out.name}.manifest.json"]
    cache = LayerCache(layer_cache)
    for entry in cache.entries():
        assert cache.usable(entry.key) is not None, entry.name  # whole, its digest as recorded


def run_to_the_end(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_killed_at_each_stage_the_same_build_then_succeeds(
    raw_production: Built,  # the system layer of this base and size, built and cached
    served: tuple[_SlowFile, str, str],
    session_layer_cache: Path,
    tmp_path: Path,
) -> None:
    server, url, sha = served
    out = tmp_path / "out" / "killed.vhdx"
    out.parent.mkdir()
    # Its own user: the config and agent layers are new; vhdx: a convert no other build made.
    argv = argv_for(
        url, sha, out, "--no-dev-mode", "--guest-username", "killed", "--format", "vhdx"
    )
    server.delay_s = 0.05  # ~20 MiB/s: the download is still under way when it is killed
    kill_during(argv, DOWNLOAD)
    assert list((cache_dir() / "downloads").rglob("*.part"))  # kept, for the next run to resume
    server.delay_s = 0
    for stage in (AGENT, CONVERT):
        kill_during(argv, stage)
        left = partials(cache_dir(), session_layer_cache, out.parent)
        assert left, f"the build killed during its {stage.name} wrote nothing there yet"
    log = run_to_the_end(argv)
    assert "left by a build that was killed" in log
    check_clean(out, session_layer_cache)
    assert not list((cache_dir() / "downloads").rglob("*.part"))  # resumed, then published
    subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)


@pytest.mark.full
def test_killed_in_the_system_and_config_layers_the_same_build_then_succeeds(
    debian_base: Path, session_layer_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "killed.qcow2"
    out.parent.mkdir()
    argv = [
        sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
        "--base", str(debian_base), "-o", str(out), "--accel", "tcg", "--no-dev-mode",
        # A size no other test builds: a new system layer to kill (tests/image/
        # test_layer_rebuilds.py's 4G must still be a miss when it runs after this).
        "--size", "4608M",
    ]  # fmt: skip
    for stage in (SYSTEM, CONFIG):
        kill_during(argv, stage)
        assert partials(session_layer_cache), stage.name
    run_to_the_end(argv)
    check_clean(out, session_layer_cache)
