"""Make the image anonymous: every instance must get its own identity at first boot."""

from __future__ import annotations

from typing import Any

from assembler.config import BuildConfig
from assembler.guest import sh, write

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


def clean(g: Any, cfg: BuildConfig) -> None:
    sh(g, "hygiene", "rm -rf " + " ".join(REMOVE))
    # An empty machine-id (not a missing one) tells systemd this is a first boot.
    write(g, "/etc/machine-id", "", mode=0o444)
    if g.is_dir("/var/lib/dbus"):
        g.ln_s("/etc/machine-id", "/var/lib/dbus/machine-id")
    sh(g, "hygiene", "find /var/log -type f -exec truncate -s 0 {} +")
