"""The layer cache: each group of build steps leaves a qcow2 overlay on its parent, keyed by a
hash of the parent and every input of its steps. A rebuild reuses the highest layer still valid
through a backing chain and builds only from there.

On disk, under $XDG_CACHE_HOME/trove-image-assembler/layers:
  <key>.json               the current entry for a key (written last, atomically)
  <key>.<generation>.qcow2 its overlay; the backing file is the parent's overlay or the base
  base-<sha256>.<format>   a link to a base layers lie on
  <key>.lock               flock: shared while a build uses the layer, exclusive to build or prune

A layer that installed packages carries its age: past the maximum age (or with --refresh) it is
built again under the same key, as a new generation. Layers above it name the generation they
were built on in their own keys, so they are rebuilt too, while a build still using the old
generation keeps it until prune removes it.

Overlays name their backing file relatively, by a name that is the same on every machine (the
parent's file name, or the base's link): a chain copied elsewhere or pulled from a registry
(assembler.fleet) works in any directory as it is, and its bytes do not depend on where it was
built.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

from assembler import cancel, diskspace, leftovers
from assembler.digestmemo import sha256_of
from assembler.download import publish, write_atomically
from assembler.errors import AssemblerError, UsageError
from assembler.paths import cache_dir
from assembler.run import run

log = logging.getLogger(__name__)

# Bumped when what a layer holds or how keys are made changes: old entries then never match.
# 2: backing files named relatively (format 1 named them by absolute path).
LAYER_FORMAT = 2
BASE_LINK_PREFIX = "base-"
DEFAULT_MAX_AGE_DAYS = 7.0
DEFAULT_MAX_CACHE_BYTES = 20 * 1024**3


class UnusableLayer(AssemblerError):
    """A layer from elsewhere that this cache will not use (it names another parent)."""


@dataclass(frozen=True)
class Parent:
    """What a layer lies on: the base image, or a cached layer."""

    path: Path
    format: str
    ident: str  # the base's sha256, or the parent entry's id (key and generation)

    @property
    def is_base(self) -> bool:
        """The base image, not a cached layer (whose file is named by its entry's id)."""
        return self.path.name != f"{self.ident}.qcow2"

    @property
    def file_name(self) -> str:
        """What an overlay on it names as its backing file: a layer's own file name, or the
        base's link, named by its digest."""
        if not self.is_base:
            return self.path.name
        return f"{BASE_LINK_PREFIX}{self.ident}.{self.format}"


@dataclass(frozen=True)
class Entry:
    key: str
    name: str
    generation: str
    parent: str  # Parent.ident
    parent_path: str
    created: float  # unix time
    ages: bool  # installed packages from an archive: rebuilt past the maximum age
    inputs: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)  # what the build reports from it
    # The overlay's, when published: a truncated or rewritten overlay is never used.
    sha256: str = ""
    backing: str = ""  # the parent's file name, as the overlay names it (beside it)

    @property
    def ident(self) -> str:
        return f"{self.key}.{self.generation}"

    def age_days(self, now: float | None = None) -> float:
        return ((now or time.time()) - self.created) / 86400


# Brings the entry for (key, parent) into the cache from elsewhere, if it is there and the
# predicate finds it fresh enough; None to build it here.
Remote = Callable[[str, "Parent", Callable[["Entry"], bool]], "Entry | None"]


def layer_key(name: str, parent: str, inputs: dict[str, Any]) -> str:
    doc = {"format": LAYER_FORMAT, "name": name, "parent": parent, "inputs": inputs}
    text = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def digest_files(paths: list[Path]) -> str:
    """sha256 over files' names and contents: the code of a layer's steps is one of its inputs."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class LayerCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "layers"
        # Private: a dev build's agent layer holds its key pair, like the image itself.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)

    # ----- reading ---------------------------------------------------------------------------

    def overlay(self, entry: Entry) -> Path:
        return self.root / f"{entry.ident}.qcow2"

    def entry(self, key: str) -> Entry | None:
        """The current entry for key if it and its overlay are whole and its parent exists."""
        try:
            doc = json.loads((self.root / f"{key}.json").read_text())
            entry = Entry(**doc)
        except (OSError, ValueError, TypeError):
            return None
        if not self.overlay(entry).is_file() or not Path(entry.parent_path).is_file():
            return None
        if not entry.backing or not (self.root / entry.backing).is_file():  # absolute: as is
            return None
        return entry

    def usable(self, key: str) -> Entry | None:
        """The entry for key, as entry(), if its overlay is also the one published: checked
        only where a build is about to use it (listing and pruning never read overlays)."""
        entry = self.entry(key)
        # Remembered by inode, size, mtime and ctime: hashed again only after a change.
        if entry is not None and (
            not entry.sha256 or sha256_of(self.overlay(entry)) != entry.sha256
        ):
            log.warning("layer %s (%s) is damaged: built again", entry.name, key[:12])
            return None
        return entry

    def entries(self) -> list[Entry]:
        found = (self.entry(p.stem) for p in sorted(self.root.glob("*.json")))
        return [e for e in found if e is not None]

    def fresh(
        self, entry: Entry, max_age_days: float, refresh: bool, asked: float | None = None
    ) -> bool:
        """Usable as it is. A layer of packages built after the caller asked for it (by a
        concurrent build, waited for) is as fresh as a refresh can make it."""
        if not entry.ages or (asked is not None and entry.created >= asked):
            return True
        return not refresh and entry.age_days() <= max_age_days

    # ----- using and building ---------------------------------------------------------------

    @contextlib.contextmanager
    def layer(
        self,
        name: str,
        parent: Parent,
        inputs: dict[str, Any],
        build: Callable[[Path], dict[str, Any]],
        *,
        ages: bool = False,
        max_age_days: float = DEFAULT_MAX_AGE_DAYS,
        refresh: bool = False,
        size: int | None = None,
        remote: Remote | None = None,
    ) -> Iterator[tuple[Entry, bool]]:
        """The layer for (name, parent, inputs), held (shared lock) while the caller uses it:
        a fresh cached entry, else one `remote` brings into the cache (a registry shared by
        other builders), else built by `build(overlay)` (which returns the entry's record)
        and published. Yields (entry, whether it was there to reuse)."""
        key = layer_key(name, parent.ident, inputs)
        asked = time.time()
        what = f"the {name} layer"
        # Two locks a key. The use lock is held shared from here until the caller is done,
        # so prune (which needs it exclusive) never removes what this build looks at, builds
        # or stands on; the build lock lets one process build the key while the others wait.
        with self._locked(key, "lock", fcntl.LOCK_SH, what):
            entry = self.usable(key)
            hit = entry is not None and self.fresh(entry, max_age_days, refresh, asked)
            if not hit:
                with self._locked(key, "build.lock", fcntl.LOCK_EX, what):
                    entry = self.usable(key)  # another process may have built it meanwhile
                    hit = entry is not None and self.fresh(entry, max_age_days, refresh, asked)
                    if entry is not None and not hit:
                        why = "--refresh" if refresh else f"{entry.age_days():.1f} days old"
                        log.info("layer %s: built again for new packages (%s)", name, why)
                    if not hit and remote is not None:
                        pulled = remote(key, parent, partial(
                            self.fresh, max_age_days=max_age_days, refresh=refresh, asked=asked
                        ))  # fmt: skip
                        if pulled is not None:
                            entry, hit = pulled, True
                    if entry is None or not hit:
                        entry = self._build(key, name, parent, inputs, build, ages, size)
            assert entry is not None
            if hit:
                log.info("layer %s: from the cache (%s)", name, key[:12])
            self._touch(entry)
            yield entry, hit

    @contextlib.contextmanager
    def _locked(self, key: str, suffix: str, mode: int, what: str) -> Iterator[IO[str]]:
        with (self.root / f"{key}.{suffix}").open("a") as handle:
            _flock(handle, mode, what)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build(
        self,
        key: str,
        name: str,
        parent: Parent,
        inputs: dict[str, Any],
        build: Callable[[Path], dict[str, Any]],
        ages: bool,
        size: int | None,
    ) -> Entry:
        generation = f"{time.time_ns():x}"
        final = self.root / f"{key}.{generation}.qcow2"
        tmp = leftovers.partial(final.with_suffix(""), ".qcow2")
        try:
            with self._lying_on(parent) as backing:
                run([
                    "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1",
                    "-F", parent.format, "-b", backing, tmp,
                    *([str(size)] if size else []),
                ])  # fmt: skip
                try:
                    record = build(tmp)
                except (AssemblerError, RuntimeError, OSError) as exc:
                    if not cancel.cancelled():  # a stopped appliance fails its call as well
                        where = (self.root, leftovers.run_dir())
                        diskspace.check(where, f"building the {name} layer", exc)
                    raise
                entry = Entry(
                    key=key,
                    name=name,
                    generation=generation,
                    parent=parent.ident,
                    parent_path=str(parent.path.absolute()),
                    created=time.time(),
                    ages=ages,
                    inputs=inputs,
                    record=record,
                    backing=backing,
                )
                entry = self._publish(entry, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return entry

    def _publish(self, entry: Entry, tmp: Path) -> Entry:
        final = self.overlay(entry)
        tmp.chmod(0o600)
        publish(tmp, final)
        # After the rename, which moves the file's ctime: the stamp the memo keeps.
        entry = replace(entry, sha256=sha256_of(final))
        write_atomically(
            self.root / f"{entry.key}.json", json.dumps(asdict(entry), indent=1).encode()
        )
        return entry

    def adopt(self, entry: Entry, overlay: Path, parent: Parent) -> Entry:
        """Publish an overlay built elsewhere (pulled from a registry, its bytes already checked
        against entry.sha256) as the current entry of its key; called under its build lock,
        as from `remote`. Its backing file must be the name this cache gives `parent`: an
        overlay naming anything else (another file, an absolute path) is refused."""
        with self._lying_on(parent) as backing:
            info = json.loads(run(["qemu-img", "info", "--output=json", "-U", overlay]))
            named = (
                info.get("format"),
                info.get("backing-filename"),
                info.get("backing-filename-format"),
            )
            if named != ("qcow2", backing, parent.format) or "data-file" in json.dumps(info):
                raise UnusableLayer(
                    f"the {entry.name} layer {entry.key[:12]} names {named[1]!r} "
                    f"({named[2]}) as its parent, not {backing!r} ({parent.format})"
                )
            entry = replace(
                entry, parent=parent.ident, parent_path=str(parent.path.absolute()), backing=backing
            )
            return self._publish(entry, overlay)

    @contextlib.contextmanager
    def _lying_on(self, parent: Parent) -> Iterator[str]:
        """The parent's name for an overlay being made on it (link_parent), held while it is
        made. A base's link this made is taken away again if the overlay never becomes an
        entry (a failed or interrupted build leaves nothing), unless another build is lying
        on it too (its shared lock) or an entry names it."""
        if not parent.is_base:
            yield self.link_parent(parent)
            return
        what = f"the link to base {parent.ident[:12]}"
        link = parent.file_name
        with self._locked(f"{BASE_LINK_PREFIX}{parent.ident}", "lock", fcntl.LOCK_SH, what) as h:
            made = not (self.root / link).is_symlink()
            try:
                yield self.link_parent(parent)
            except BaseException:
                if made:
                    self._drop_link(h, link)
                raise

    def _drop_link(self, handle: IO[str], link: str) -> None:
        try:
            # Exclusive only if no other build holds the link's shared lock.
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        if not any(e.backing == link for e in self.entries()):
            (self.root / link).unlink(missing_ok=True)

    def link_parent(self, parent: Parent) -> str:
        """How an overlay here names the parent: its file name when it lies in this cache,
        a link's name for a base (which has no backing file of its own). A layer of another
        cache (the shared one, under a build's private cache) is named by its absolute path:
        qemu resolves a backing name against the path it opened, so a link to an overlay
        would break the chain below it; private layers never leave the machine anyway."""
        name = parent.file_name
        here = self.root / name
        target = parent.path.absolute()
        if here.absolute() == target:
            return name
        if not parent.is_base:
            return str(target)
        if here.is_symlink() and Path(os.readlink(here)) == target:
            return name
        tmp = leftovers.partial(here)
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, here)  # atomic: a concurrent build sees the old link or the new one
        return name

    def _touch(self, entry: Entry) -> None:
        """Last use, for prune's least-recently-used order."""
        with contextlib.suppress(OSError):
            os.utime(self.root / f"{entry.key}.json")

    # ----- listing and pruning ---------------------------------------------------------------

    def last_used(self, entry: Entry) -> float:
        try:
            return (self.root / f"{entry.key}.json").stat().st_mtime
        except OSError:
            return entry.created

    def size(self, entry: Entry) -> int:
        try:
            return self.overlay(entry).stat().st_blocks * 512
        except OSError:
            return 0

    def prune(
        self, max_bytes: int | None = None, older_than_days: float | None = None
    ) -> list[str]:
        """Remove what no build can use, then least recently used entries (with the entries
        built on them) until the cache fits max_bytes; layers in use are left alone.
        Returns what was removed."""
        removed: list[str] = []
        removed += self._remove_orphans()
        entries = sorted(self.entries(), key=self.last_used)
        now = time.time()
        total = sum(self.size(e) for e in entries)
        for entry in entries:
            too_old = older_than_days is not None and (now - self.last_used(entry)) > (
                older_than_days * 86400
            )
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            for gone in self._remove_with_children(entry):
                total -= gone[1]
                removed.append(gone[0])
        removed += self._remove_orphans()
        outputs = self.root / "outputs"
        if outputs.is_dir():
            from assembler.outputs import OutputCache

            removed += OutputCache(outputs).prune({e.ident for e in self.entries()})
        return removed

    def _remove_with_children(self, entry: Entry) -> list[tuple[str, int]]:
        gone: list[tuple[str, int]] = []
        for child in [e for e in self.entries() if e.parent == entry.ident]:
            gone += self._remove_with_children(child)
        with self._unused(entry.key) as free:
            # Read again under the lock: a build may have published a new generation.
            current = self.entry(entry.key)
            if not free or current is None or current.ident != entry.ident:
                log.info("layer %s (%s) is in use: kept", entry.name, entry.key[:12])
                return gone
            size = self.size(entry)
            (self.root / f"{entry.key}.json").unlink(missing_ok=True)
            self.overlay(entry).unlink(missing_ok=True)
            gone.append((f"{entry.name} {entry.key[:12]}", size))
        return gone

    def _remove_orphans(self) -> list[str]:
        """Overlays no entry names (older generations, killed builds' leftovers) and entries
        whose overlay or parent is gone; each only while no build uses or builds its key."""
        removed = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(BASE_LINK_PREFIX):
                # Only once its base is gone: a live link costs nothing, and a build may be
                # about to lie on it (it is made before the entry that names it).
                if path.is_symlink() and not path.exists():
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
                continue
            if path.suffix == ".lock" or path.is_dir():  # outputs/: pruned by OutputCache
                continue
            key = path.name.lstrip(".").split(".")[0]
            with self._unused(key) as free:
                if not free or not path.exists():
                    continue
                current = self.entry(key)
                if path.suffix == ".json" and current is not None:
                    continue
                if path.suffix == ".qcow2" and current and path == self.overlay(current):
                    continue
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    @contextlib.contextmanager
    def _unused(self, key: str) -> Iterator[bool]:
        """The key's use lock, exclusive if no build holds it: yields whether it was free."""
        with (self.root / f"{key}.lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def parse_bytes(text: str) -> int:
    from assembler.config import parse_size

    try:
        return parse_size(text)
    except UsageError:
        raise UsageError(f"cannot read size {text!r}: use e.g. 20G") from None


def describe(cache: LayerCache) -> str:
    """`assembler cache list`: one line a layer."""
    rows = [("KEY", "LAYER", "SIZE", "AGE", "LAST USED", "PARENT")]
    for e in sorted(cache.entries(), key=lambda e: e.created):
        used = datetime.datetime.fromtimestamp(cache.last_used(e), datetime.UTC)
        rows.append(
            (
                e.key[:12],
                e.name + (" (ages)" if e.ages else ""),
                f"{cache.size(e) / 2**20:.0f} MiB",
                f"{e.age_days():.1f} d",
                used.strftime("%Y-%m-%d %H:%M"),
                e.parent.split(".")[0][:12],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    total = sum(cache.size(e) for e in cache.entries())
    lines.append(f"{len(rows) - 1} layers, {total / 2**20:.0f} MiB in {cache.root}")
    return "\n".join(lines)


def _flock(handle: IO[str], mode: int, what: str) -> None:
    """flock, polled so that Ctrl-C stops a build waiting for another one."""
    waiting = False
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not waiting:
                log.info("waiting for another build using or building %s", what)
                waiting = True
            cancel.check()
            time.sleep(0.25)
