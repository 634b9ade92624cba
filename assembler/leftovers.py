"""What a killed build leaves behind, named so that the next build can find and remove it.

SIGKILL (or the OOM killer, or a power cut of the process) runs no cleanup. So nothing a build
writes before publishing is anonymous: a file or directory beside its destination carries the
writer's pid (`.<name>.<pid>.partial`, see `partial()`), and scratch space lives in the
process's run directory (`<cache>/run/<pid>`). A new build removes those whose pid is no longer
running (a live pid is another build at work, and is left alone).

The children die with the build instead: `run.die_with_parent` for our subprocesses, and
libguestfs's own recovery process for the appliance.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from assembler.paths import cache_dir

log = logging.getLogger(__name__)

# `.<name>.<pid>.partial`, `.part` or `.tmp`, with any suffix after it (`.partial.qcow2`).
PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.(?:partial|part|tmp)(?:\..*)?$")
RUN = "run"
# The cache's partials lie at most this deep (<cache>/layers/outputs/.x.1.partial); deeper is
# the content of a cache entry (a wheelhouse, an unpacked stand-in), never a partial of ours.
SWEEP_DEPTH = 3


def partial(dest: Path, suffix: str = "") -> Path:
    """Where this process writes `dest` before renaming it into place."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.partial{suffix}")


def _run_path() -> Path:
    return cache_dir() / RUN / str(os.getpid())


def run_dir() -> Path:
    """This process's scratch directory, on the cache's filesystem (so renames stay cheap)."""
    path = _run_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def release() -> None:
    """Remove this process's run directory (at exit; whatever is still in it is scratch)."""
    path = _run_path()
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _owner(name: str) -> int | None:
    m = PARTIAL.match(name)
    return int(m["pid"]) if m else None


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # not ours to remove (another user's cache): leave it
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise
        log.debug("cannot remove %s: %s", path, exc)
        return False
    return True


def _dead_entries(directory: Path, depth: int) -> Iterable[Path]:
    try:
        children = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for child in children:
        pid = _owner(child.name)
        if pid is not None:
            if pid != os.getpid() and not alive(pid):
                yield Path(child.path)
        elif depth > 1 and child.is_dir(follow_symlinks=False):
            yield from _dead_entries(Path(child.path), depth - 1)


def sweep(extra: Iterable[Path] = (), output: Path | None = None) -> list[Path]:
    """Remove what builds that are no longer running left: the run directories and partials in
    the cache, in `extra` directories (a layer cache elsewhere), and beside `output` (only
    partials of that output's own name: the directory is the user's). Returns what went."""
    removed: list[Path] = []
    runs = cache_dir() / RUN
    if runs.is_dir():
        for child in runs.iterdir():
            if child.name.isdigit() and not alive(int(child.name)) and _remove(child):
                removed.append(child)
    for directory in (cache_dir(), *extra):
        removed += [p for p in _dead_entries(directory, SWEEP_DEPTH) if _remove(p)]
    if output is not None:
        mine = f".{output.name}."
        for p in _dead_entries(output.parent, 1):
            if p.name.startswith(mine) and _remove(p):
                removed.append(p)
    for path in removed:
        log.info("removed %s, left by a build that was killed", path)
    return removed
