"""What a base image is, read once and kept with its sha256: the root device and mountpoints
(libguestfs inspection: 5 s of each cold build under emulation) and what the host needs to
resolve packages for it (the guest's dpkg status, its architecture, the keys its apt trusts).

Under $XDG_CACHE_HOME/trove-image-assembler/basefacts/<sha256>/: facts.json (written last) and
the files it names with their sha256, checked on every read: a damaged entry is read again
from the image, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler import leftovers
from assembler.manifest import sha256_file
from assembler.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1
# Where apt in a Debian or Ubuntu guest finds the keys it trusts for sources without signed-by.
TRUSTED_FILE = "/etc/apt/trusted.gpg"
TRUSTED_PARTS = "/etc/apt/trusted.gpg.d"
DPKG_STATUS = "/var/lib/dpkg/status"


@dataclass(frozen=True)
class BaseFacts:
    sha256: str  # the base image's
    root: str
    mounts: dict[str, str]
    arch: str  # dpkg's native architecture
    directory: str  # the cache entry holding status and trusted/
    files: dict[str, str]  # file under directory -> its sha256

    @property
    def status(self) -> Path:
        return Path(self.directory) / "status"

    def trusted(self) -> list[Path]:
        return sorted(Path(self.directory, f) for f in self.files if f.startswith("trusted/"))


def facts_root() -> Path:
    return cache_dir() / "basefacts"


def load(sha256: str, root: Path | None = None) -> BaseFacts | None:
    entry = (root or facts_root()) / sha256
    try:
        doc = json.loads((entry / "facts.json").read_text())
        if doc.pop("format") != FORMAT:
            return None
        facts = BaseFacts(**{**doc, "directory": str(entry)})
        for name, digest in facts.files.items():
            if sha256_file(entry / name) != digest:
                log.warning("base facts %s: %s is damaged; read again", sha256[:12], name)
                return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return facts


def read(g: Any) -> dict[str, bytes]:
    """The files from a mounted guest: dpkg status and every key its apt trusts."""
    files: dict[str, bytes] = {"status": g.read_file(DPKG_STATUS)}
    if g.is_file(TRUSTED_FILE):
        files["trusted/trusted.gpg"] = g.read_file(TRUSTED_FILE)
    if g.is_dir(TRUSTED_PARTS):
        for name in sorted(g.ls(TRUSTED_PARTS)):
            if name.endswith((".gpg", ".asc")) and g.is_file(f"{TRUSTED_PARTS}/{name}"):
                files[f"trusted/{name}"] = g.read_file(f"{TRUSTED_PARTS}/{name}")
    return files


def save(
    sha256: str,
    root_device: str,
    mounts: dict[str, str],
    arch: str,
    files: dict[str, bytes],
    root: Path | None = None,
) -> BaseFacts:
    """Write the entry whole or not at all (a temporary directory renamed into place)."""
    top = root or facts_root()
    top.mkdir(parents=True, exist_ok=True)
    final = top / sha256
    tmp = leftovers.partial(final)
    tmp.mkdir()
    try:
        digests = {}
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        doc = {
            "format": FORMAT, "sha256": sha256, "root": root_device, "mounts": mounts,
            "arch": arch, "files": digests,
        }  # fmt: skip
        (tmp / "facts.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
        if final.exists():  # damaged, or written by a concurrent build: ours is as good
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another build renamed its copy in first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = load(sha256, top)
    if loaded is None:
        raise OSError(f"base facts for {sha256[:12]} could not be written")
    return loaded
