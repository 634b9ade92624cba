"""The guest user Trove's agent runs as, and root's password."""

from __future__ import annotations

from typing import Any

from assembler.config import BuildConfig
from assembler.guest import sh, write
from assembler.resources import render

SUDOERS = "/etc/sudoers.d/60_trove_guest"


def create_guest_user(g: Any, cfg: BuildConfig) -> None:
    """Created at build time, as trovestack does, so later steps can give it files and groups.

    Unlike trovestack, no password (it sets the user name as password): login is by key only.
    """
    user = cfg.guest_username
    sh(
        g,
        "guest-user",
        f"id -u {user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {user}; "
        f"usermod -aG sudo {user}; passwd -l {user} >/dev/null",
    )


def sudoers(g: Any, cfg: BuildConfig) -> None:
    write(g, SUDOERS, render("overlays/user/60_trove_guest", user=cfg.guest_username), mode=0o440)
    sh(g, "sudoers", f"visudo -c -q -f {SUDOERS}")


def root_password(g: Any, cfg: BuildConfig) -> None:
    """TROVE_ROOT_PASSWORD arrives already hashed; without it root has no password at all."""
    if cfg.root_password_hash is None:
        sh(g, "root-password", "usermod -p '*' root")
        return
    # chpasswd -e takes the hash on stdin-like input; the hash has no shell metacharacters
    # beyond '$', '/' and '.', so single quotes keep it literal.
    sh(g, "root-password", f"echo 'root:{cfg.root_password_hash}' | chpasswd -e")
