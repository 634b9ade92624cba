"""Telling a full disk from other failures, so that a build says so in one line.

A step or a qemu-img that runs out of room fails with whatever its program says (dpkg's
"Input/output error", ext4 gone read-only, qemu-img's "error while writing sector"): the host
looks at the filesystems the build writes to and names the one that is full.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable
from pathlib import Path

from assembler.errors import NoSpaceError

# Below this much free room, a failure there is a full disk: ext4 keeps a little beyond what is
# shown, and a write stops at the first block it cannot have, not at 0.
LOW_WATER_BYTES = 32 * 2**20


def free_bytes(path: Path) -> int:
    """Free room on the filesystem holding `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def full(paths: Iterable[Path]) -> Path | None:
    """The first of `paths` whose filesystem is (nearly) full, or None."""
    for path in paths:
        try:
            if free_bytes(path) < LOW_WATER_BYTES:
                return path
        except OSError:
            continue
    return None


def check(paths: Iterable[Path], what: str, cause: BaseException | None = None) -> None:
    """Raise NoSpaceError naming the full filesystem when one of `paths` is out of room."""
    where = full(paths)
    if where is None and not (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
        return
    raise NoSpaceError(where or Path(getattr(cause, "filename", None) or "?"), what)
