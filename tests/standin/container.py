"""A stand-in image run the way a container runtime would run it, without docker.

Its layers are unpacked in order into a directory, and commands run there by chroot as
1001:1001 (the user Trove's agent gives the container), in private mount and PID namespaces with
/proc and the host's /dev, so nothing outlives the test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from assembler.run import run

USER = "1001:1001"


def image_config(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_text())
    config: dict[str, Any] = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    config["_layers"] = [d["digest"] for d in manifest["layers"]]
    return config


def unpack(layout: Path, dest: Path) -> dict[str, Any]:
    """Every layer of the layout's image, in order, into dest; returns the image config."""
    config = image_config(layout)
    dest.mkdir(parents=True, exist_ok=True)
    for digest in config["_layers"]:
        run(["tar", "--numeric-owner", "-xzpf", _blob(layout, digest), "-C", dest])
    return config


def container_argv(root: Path, config: dict[str, Any], env: dict[str, str],
                   args: Sequence[str] | None = None, entrypoint: bool = True) -> list[str]:  # fmt: skip
    """argv that runs the image's Entrypoint (+ args, or its Cmd) in root as 1001:1001."""
    image_env = dict(e.split("=", 1) for e in config["config"]["Env"])
    full_env = [f"{k}={v}" for k, v in {**image_env, **env}.items()]
    cmd = list(config["config"]["Cmd"] if args is None else args)
    if entrypoint:
        cmd = [*config["config"]["Entrypoint"], *cmd]
    # chroot's own PATH search happens outside the image, so resolve the command in it.
    path = image_env["PATH"]
    cmd[0] = _which(root, cmd[0], path)
    mounts = 'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$@"'
    return [
        "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
        "sh", "-c", mounts, str(root), f"--userspec={USER}", "--groups=1001", str(root),
        "env", "-i", *full_env, *cmd,
    ]  # fmt: skip


def exec_in(root: Path, config: dict[str, Any], *cmd: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """A command in the image (like `docker exec`), its result whatever its exit status."""
    argv = container_argv(root, config, env or {}, cmd, entrypoint=False)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The container's main process in the background; killed (with its namespace) at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        # unshare --kill-child: its death kills the namespace's init, and so every process in it.
        proc.kill()
        proc.wait(timeout=30)


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 120) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the container exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(1)
    raise AssertionError(f"not ready within {timeout} s:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inside(root: Path, image_path: str) -> Path:
    """The host path of an absolute path in the image (root / "/x" would be the host's /x)."""
    return root / image_path.lstrip("/")


def make_dir(root: Path, image_path: str, mode: int = 0o755) -> None:
    """A directory owned by 1001:1001, as the agent makes them for the container's volumes."""
    path = inside(root, image_path)
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 1001, 1001)
    path.chmod(mode)


def _which(root: Path, name: str, path: str) -> str:
    if "/" in name:
        return name
    for d in path.split(":"):
        if os.path.lexists(root / d.lstrip("/") / name):
            return f"{d}/{name}"
    raise AssertionError(f"{name} is not on the image's PATH {path}")


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest
