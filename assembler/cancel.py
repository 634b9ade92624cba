"""Interrupting a build: stop the processes it waits on, so it unwinds and cleans up promptly.

The work runs in a worker thread (see cli.py) because Python runs signal handlers only in the
main thread and only between bytecodes: a build blocked in a libguestfs call or in qemu-img
would otherwise sit out a SIGTERM for minutes. The main thread catches the signal, marks the
build cancelled and terminates the child processes registered here (the appliance, qemu-img,
a booted guest); the worker's blocked call then fails and its cleanup runs as usual.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from assembler.errors import EXIT_INTERRUPTED, AssemblerError

_lock = threading.Lock()
_pids: set[int] = set()
_cancelled = threading.Event()


class Interrupted(AssemblerError):
    exit_code = EXIT_INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")


@contextlib.contextmanager
def child(pid: int) -> Iterator[None]:
    """Register a child process for the time it runs; if cancelled meanwhile, stop it now."""
    with _lock:
        _pids.add(pid)
    try:
        if _cancelled.is_set():
            _terminate(pid)
        yield
    finally:
        with _lock:
            _pids.discard(pid)


def cancel_all() -> None:
    _cancelled.set()
    with _lock:
        pids = list(_pids)
    for pid in pids:
        _terminate(pid)


def check() -> None:
    """Raise Interrupted between steps once the build was cancelled."""
    if _cancelled.is_set():
        raise Interrupted


def cancelled() -> bool:
    return _cancelled.is_set()


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
