"""cloud-init: where Trove's instance data comes from, and who the default user is."""

from __future__ import annotations

from typing import Any

from assembler.config import BuildConfig
from assembler.guest import write
from assembler.resources import render

CFG_DIR = "/etc/cloud/cloud.cfg.d"
# Groups the default user gets when cloud-init (re)creates it on a fresh instance.
DEFAULT_USER_GROUPS = ("sudo", "docker")


def datasources(g: Any, cfg: BuildConfig) -> None:
    text = render("cloudinit/91-trove-datasources.cfg", datasources=", ".join(cfg.datasources))
    write(g, f"{CFG_DIR}/91-trove-datasources.cfg", text)


def default_user(g: Any, cfg: BuildConfig) -> None:
    text = render(
        "cloudinit/92-trove-default-user.cfg",
        user=cfg.guest_username,
        groups=", ".join(DEFAULT_USER_GROUPS),
    )
    write(g, f"{CFG_DIR}/92-trove-default-user.cfg", text)


def etc_hosts(g: Any, cfg: BuildConfig) -> None:
    text = render("cloudinit/93-trove-etc-hosts.cfg", etc_hosts=str(cfg.etc_hosts))
    write(g, f"{CFG_DIR}/93-trove-etc-hosts.cfg", text)
