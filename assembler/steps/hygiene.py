"""Make the image anonymous: every instance must get its own identity at first boot."""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from typing import Any

from assembler import keyscan
from assembler.config import BuildConfig
from assembler.guest import sh, write

log = logging.getLogger(__name__)

# Removed outright; globs are expanded by the guest's shell.
REMOVE = (
    "/etc/ssh/ssh_host_*",  # every instance would share the host keys
    "/var/lib/cloud/*",  # cloud-init must see a new instance and run its modules again
    "/var/lib/systemd/random-seed",  # instances must not share an entropy seed
    "/var/lib/dbus/machine-id",
    "/var/log/journal/*",
    "/var/log/*.gz",
    "/var/log/*.[0-9]",
    "/tmp/*",
    "/var/tmp/*",
    "/root/.bash_history",
    "/home/*/.bash_history",
    "/var/cache/debconf/*-old",
)


# Docs some packages ship with real, published example keys (cloud-init's
# examples/cloud-config-ssh-keys.txt and cloud-config-ansible-managed.txt on bookworm): no
# instance reads its docs, and the boot test's key scan (the same detector) would find them.
DOCS = "/usr/share/doc"


def clean(g: Any, cfg: BuildConfig) -> None:
    sh(g, "hygiene", "rm -rf " + " ".join(REMOVE))
    strip_doc_keys(g)
    # An empty machine-id (not a missing one) tells systemd this is a first boot.
    write(g, "/etc/machine-id", "", mode=0o444)
    if g.is_dir("/var/lib/dbus"):
        g.ln_s("/etc/machine-id", "/var/lib/dbus/machine-id")
    sh(g, "hygiene", "find /var/log -type f -exec truncate -s 0 {} +")


def strip_doc_keys(g: Any, docs: str = DOCS) -> list[str]:
    """Remove the files under `docs` that hold a private key; return their paths. grep picks
    the candidates in the appliance, the shared detector decides on a host copy of each."""
    patterns = shlex.join(keyscan.grep_patterns())
    listed = sh(
        g,
        "hygiene",
        # One path a line: guestfs returns a C string, so a NUL-separated list would end at
        # its first entry. (Doc paths hold no newline; one that did would just be skipped.)
        f"if [ -d {docs} ]; then find {docs} -type f -print0 | "
        f"LC_ALL=C xargs -0 -r grep -lsF {patterns}; fi; true",
    )
    removed = []
    with tempfile.TemporaryDirectory(prefix="doc-keys-") as tmp:
        local = os.path.join(tmp, "candidate")
        for path in filter(None, listed.split("\n")):
            if not g.is_file(path):
                continue
            g.download(path, local)
            if keyscan.scan_file(local) is not None:
                g.rm(path)
                removed.append(path)
    if removed:
        log.info("removed %d docs holding private keys: %s", len(removed), removed)
    return removed
