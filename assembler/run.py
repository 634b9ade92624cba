"""The one way this project runs a host subprocess: logged, checked, typed errors."""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from assembler import cancel
from assembler.errors import CommandError, UsageError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True)  # resolved now: the forked child must not load it


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn that has the kernel SIGKILL the child once the thread that started it is
    gone: a build killed outright (SIGKILL runs no cleanup) leaves no qemu-img, QEMU or server
    running. Every host subprocess of the project starts with it."""
    parent = os.getpid()

    def arm() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def run(
    argv: Sequence[str | Path],
    *,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    secret_input: bool = False,
) -> str:
    """Run argv, return its stdout; raise CommandError with stderr when it fails.

    stdin is closed unless `input` is given, so a command never waits on the terminal.
    """
    args = [str(a) for a in argv]
    log.debug("run: %s%s", shlex.join(args), " (stdin hidden)" if secret_input else "")
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
            preexec_fn=die_with_parent(),
        )
    except FileNotFoundError as exc:
        raise UsageError(f"{args[0]} is not installed; run `make setup`") from exc
    with proc, cancel.child(proc.pid):
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise CommandError(args, -1, f"timed out after {timeout} s") from exc
    cancel.check()
    if proc.returncode != 0:
        log.debug("stderr of %s:\n%s", args[0], stderr)
        raise CommandError(args, proc.returncode, stderr)
    return stdout
