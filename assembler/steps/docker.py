"""Docker: the database runs as a container, so the guest needs a daemon enabled at boot."""

from __future__ import annotations

import urllib.request
from typing import Any

from assembler.config import BuildConfig
from assembler.distros import Release
from assembler.errors import BuildError
from assembler.guest import sh, write
from assembler.packages import DOCKER

DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
# Where the host's apt finds the same key (its trusted parts, see assembler.hostapt).
HOST_KEYRING = ""
DOCKER_LIST = "/etc/apt/sources.list.d/docker.list"


def docker_ce_source(release: Release, arch: str = "amd64", keyring: str = DOCKER_KEYRING) -> str:
    """The apt source line for Docker's repository, pinned to its own signing key (the host's
    apt, given no keyring, trusts it through its trusted parts instead)."""
    repo = release.distro.docker_ce_repo
    signed = f" signed-by={keyring}" if keyring else ""
    return f"deb [arch={arch}{signed}] {repo} {release.codename} stable\n"


def fetch_docker_key(release: Release, timeout: float = 30.0) -> bytes:
    """Docker's apt signing key, fetched by the host (the appliance has no usable TLS here)."""
    url = release.distro.docker_ce_key_url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            key = bytes(resp.read())
    except OSError as exc:
        raise BuildError("docker", f"cannot fetch Docker's signing key from {url}: {exc}") from exc
    if b"BEGIN PGP PUBLIC KEY BLOCK" not in key:
        raise BuildError("docker", f"{url} did not return an OpenPGP key")
    return key


def add_docker_repo(g: Any, cfg: BuildConfig) -> None:
    """Docker's repository goes into the guest for good: its updates come from there. (The
    build's packages come from the host, which adds the same source to its own list.)"""
    if not DOCKER[cfg.docker_source].needs_docker_repo:
        return
    write(g, DOCKER_KEYRING, fetch_docker_key(cfg.release))
    write(g, DOCKER_LIST, docker_ce_source(cfg.release))


def enable(g: Any, cfg: BuildConfig) -> None:
    units = " ".join(DOCKER[cfg.docker_source].units)
    sh(g, "docker", f"systemctl enable {units}")


def add_user(g: Any, cfg: BuildConfig) -> None:
    """The agent (running as the guest user) drives docker through its socket."""
    sh(g, "docker-group", f"usermod -aG docker {cfg.guest_username}")
