"""Docker and the runtime packages: resolved and fetched by the host, installed in one apt
transaction in the guest.

The host needs the guest's dpkg status and trusted keys (assembler.basefacts): cached for a
known base, the host fetches while the appliance starts (`prepare`); for a new base they are
read from the guest first (`learn_base`) and the host fetches then (`fetch`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from assembler import basefacts, hostapt
from assembler.basefacts import BaseFacts
from assembler.config import BuildConfig
from assembler.distros import apt_sources
from assembler.facts import Facts, Prepared
from assembler.guest import sh
from assembler.packages import DOCKER, RUNTIME_PACKAGES, docker_packages
from assembler.steps import apt, docker

log = logging.getLogger(__name__)


def wanted(cfg: BuildConfig) -> list[str]:
    return sorted({*RUNTIME_PACKAGES, *docker_packages(cfg.docker_source, cfg.release)})


def _fetch(cfg: BuildConfig, base: BaseFacts, scratch: Path) -> hostapt.Fetched:
    sources = apt_sources(cfg.release, cfg.mirror)
    keys: list[tuple[str, bytes]] = []
    if DOCKER[cfg.docker_source].needs_docker_repo:
        sources += docker.docker_ce_source(cfg.release, base.arch, docker.HOST_KEYRING)
        keys.append(("docker.asc", docker.fetch_docker_key(cfg.release)))
    return hostapt.fetch(base, sources, wanted(cfg), scratch, keys)


def prepare(cfg: BuildConfig, facts: Facts) -> Prepared:
    """While the appliance starts: the packages, when this base's facts are known already."""
    if facts.base_facts is None:
        return Prepared()
    fetched = _fetch(cfg, facts.base_facts, facts.scratch)
    return Prepared(facts={"host_packages": fetched})


def learn_base(
    g: Any, cfg: BuildConfig, base_sha256: str, base_facts: BaseFacts | None, root: str,
    mounts: dict[str, str],
) -> dict[str, Any] | None:  # fmt: skip
    """A base seen for the first time: what the host needs of it, read and cached."""
    if base_facts is not None:
        return None
    arch = sh(g, "learn-base", "dpkg --print-architecture").strip()
    saved = basefacts.save(base_sha256, root, mounts, arch, basefacts.read(g))
    log.info("base %s: facts cached (root %s, %s)", base_sha256[:12], root, arch)
    return {"base_facts": saved}


def fetch(
    g: Any, cfg: BuildConfig, base_facts: BaseFacts, host_packages: Any, scratch: Path
) -> dict[str, Any] | None:
    """The host resolves and downloads now, if it could not while the appliance started."""
    if host_packages is not None:
        return None
    return {"host_packages": _fetch(cfg, base_facts, scratch)}


def install(g: Any, cfg: BuildConfig, host_packages: hostapt.Fetched) -> None:
    debs = [(p.repacked, p.deb.name) for p in host_packages.packages]
    apt.install_debs(g, debs, "packages")


def report(g: Any, facts: Facts) -> dict[str, Any]:
    """The layer's record: what dpkg has now, and what the host fetched for it."""
    fetched = facts.host_packages
    return {
        "packages": installed(g),
        "mounts": facts.mounts,
        # What the disk boots with: the layers above keep the boot partitions as they are.
        "firmware": list(facts.firmware),
        "host_packages": fetched.record() if fetched else [],
    }


def installed(g: Any) -> dict[str, str]:
    """Every installed package with its version, for the manifest."""
    out = g.sh("dpkg-query -W -f='${db:Status-Abbrev}\\t${Package}\\t${Version}\\n'")
    packages = {}
    for line in str(out).splitlines():
        status, name, version = line.split("\t")
        if status.startswith("ii"):
            packages[name] = version
    return packages
