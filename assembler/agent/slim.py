"""Slim the laid-out venv: the dependencies' test suites and their fixtures go, nothing else.

4,797 of the bookworm venv's 18,185 files (43 of 254 MiB, 8 of the 65 MiB its zstd tar sends)
are tests no agent code path imports, uploaded through the appliance's slow file channel and
unpacked under emulation in every build. The rule is data (SLIM_DIRS). No wheel here ships docs
as a directory (paste's docs/ is a project template, kept); `testing` packages (sqlalchemy,
alembic, mako) are libraries others import, kept. That all of trove's agent code, every
datastore manager included, still imports is tested on the real venv
(tests/image/test_agent_slim_real.py).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

# Directory names under site-packages whose whole subtree goes, and why nothing needs them.
SLIM_DIRS: tuple[tuple[str, str], ...] = (
    ("tests", "test suites and fixtures: trove's and its dependencies' (oslo.*, *client...)"),
    ("test", "the same under the singular name (osc_lib's, openstacksdk's)"),
)
# Never entered: pip and importlib.metadata read entry points and RECORD from there, and a
# directory named like a test suite inside one is a licence file's path, not tests.
KEEP_SUFFIX = ".dist-info"


@dataclass(frozen=True)
class Slimmed:
    dirs: tuple[str, ...]  # relative to site-packages, sorted
    files: int
    bytes: int

    def manifest(self) -> dict[str, object]:
        return {"removed_dirs": len(self.dirs), "removed_files": self.files, "bytes": self.bytes}


def slim_venv(site: Path) -> Slimmed:
    """Remove SLIM_DIRS from the site-packages directory `site`, and their files from the
    RECORD of the distributions that installed them (so `pip show -f` and
    importlib.metadata.files() list only what is there)."""
    names = {name for name, _ in SLIM_DIRS}
    doomed: list[Path] = []
    for dirpath, dirnames, _ in os.walk(site):
        here = Path(dirpath)
        if here.name.endswith(KEEP_SUFFIX):
            dirnames[:] = []
            continue
        for name in [d for d in dirnames if d in names]:
            doomed.append(here / name)
            dirnames.remove(name)  # its own nested tests go with it
    files = size = 0
    for top in doomed:
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                files += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
        shutil.rmtree(top)
    relative = sorted(p.relative_to(site).as_posix() for p in doomed)
    prune_records(site, relative)
    log.info(
        "slimmed the agent venv: %d test directories, %d files, %.1f MiB",
        len(relative),
        files,
        size / 2**20,
    )
    return Slimmed(tuple(relative), files, size)


def prune_records(site: Path, removed: list[str]) -> None:
    """Drop from every RECORD under `site` the rows of `removed` (paths relative to it: files,
    or directories with everything below them)."""
    if not removed:
        return
    exact = set(removed)
    prefixes = tuple(d + "/" for d in removed)
    for record in site.glob(f"*{KEEP_SUFFIX}/RECORD"):
        rows = list(csv.reader(io.StringIO(record.read_text())))
        kept = [r for r in rows if not (r and _gone(_normal(r[0]), exact, prefixes))]
        if len(kept) != len(rows):
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(kept)
            record.write_text(out.getvalue())


def _gone(path: str, exact: set[str], prefixes: tuple[str, ...]) -> bool:
    return path in exact or path.startswith(prefixes)


def _normal(path: str) -> str:
    # RECORD paths are relative to site-packages; scripts' start with ../../../bin.
    return PurePosixPath(os.path.normpath(path)).as_posix()
