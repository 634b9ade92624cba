"""The one way this project runs a host subprocess: logged, checked, typed errors."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from assembler import cancel
from assembler.errors import CommandError, UsageError

log = logging.getLogger(__name__)


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
