"""Install docker and the runtime packages in one apt transaction."""

from __future__ import annotations

from typing import Any

from assembler.config import BuildConfig
from assembler.packages import DOCKER, RUNTIME_PACKAGES
from assembler.steps import apt


def install(g: Any, cfg: BuildConfig) -> None:
    wanted = sorted({*RUNTIME_PACKAGES, *DOCKER[cfg.docker_source].packages})
    apt.install(g, wanted, "packages")


def installed(g: Any) -> dict[str, str]:
    """Every installed package with its version, for the manifest."""
    out = g.sh("dpkg-query -W -f='${db:Status-Abbrev}\\t${Package}\\t${Version}\\n'")
    packages = {}
    for line in str(out).splitlines():
        status, name, version = line.split("\t")
        if status.startswith("ii"):
            packages[name] = version
    return packages
