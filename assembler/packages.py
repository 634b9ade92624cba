"""Which packages go into a Trove guest, as data.

The runtime part of what trove's guest-agent and ubuntu-guest elements install: what the agent,
the image loader and an operator on the instance use. The -dev packages and build-essential
those elements add only build Python wheels inside the image; our Python comes prebuilt, so
they stay out (smaller image, fewer security updates).
"""

from __future__ import annotations

from dataclasses import dataclass

from assembler.config import DockerSource
from assembler.distros import Release

RUNTIME_PACKAGES: tuple[str, ...] = (
    "acl",
    "acpid",
    "ca-certificates",
    "cloud-guest-utils",
    "cloud-init",
    "cron",
    "crudini",
    "curl",  # the agent's unit activates the docker-hostnic plugin through its socket
    "dbus",
    "ethtool",
    "gnupg",
    "iptables",
    "less",
    "logrotate",
    "netbase",
    "openssh-client",
    "openssh-server",
    "psmisc",
    "python3-venv",
    "rsync",
    "sudo",
    "uuid-runtime",
)


@dataclass(frozen=True)
class DockerPackaging:
    packages: tuple[str, ...]
    # Services enabled at boot (systemd unit names).
    units: tuple[str, ...]
    # Whether Docker's own apt repository has to be added to the guest.
    needs_docker_repo: bool


def docker_packages(source: DockerSource, release: Release) -> tuple[str, ...]:
    """What installs docker from that source on that release."""
    extra = release.archive_docker_extra if source is DockerSource.ARCHIVE else ()
    return (*DOCKER[source].packages, *extra)


DOCKER: dict[DockerSource, DockerPackaging] = {
    DockerSource.ARCHIVE: DockerPackaging(
        # apparmor: docker.io recommends it and uses its default profile when the kernel has it.
        ("docker.io", "apparmor"),
        ("docker.service", "containerd.service"),
        needs_docker_repo=False,
    ),
    DockerSource.DOCKER_CE: DockerPackaging(
        ("docker-ce", "docker-ce-cli", "containerd.io"),
        ("docker.service", "containerd.service"),
        needs_docker_repo=True,
    ),
}
