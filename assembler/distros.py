"""Facts about the guest distributions and releases, as data.

Adding a release is adding a row to RELEASES; steps read these facts and never branch on
distro names themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class GuestOS(StrEnum):
    UBUNTU = "ubuntu"
    DEBIAN = "debian"


@dataclass(frozen=True)
class Distro:
    """What is common to every release of one distribution."""

    name: GuestOS
    # The public package archive; `--mirror` replaces it for a build.
    archive: str
    # Where the security suite lives, relative to the archive URL: "" for the same archive
    # (Ubuntu), or a sibling path (Debian's `/debian-security` next to `/debian`).
    security_sibling: str
    # Suite name pattern of the security suite; {release} is the codename.
    security_suite: str
    updates_suite: str
    components: tuple[str, ...]
    keyring: str
    # Docker's own apt repository (`--docker-source docker-ce`), as trovestack's ubuntu-docker
    # element uses it; {arch} and {release} are filled in.
    docker_ce_repo: str
    docker_ce_key_url: str


@dataclass(frozen=True)
class Release:
    """One release of a distribution, as a guest image."""

    distro: Distro
    codename: str
    version: str
    python: str  # the guest's python3 major.minor
    default_user: str  # the cloud image's own default user, replaced by the guest user
    # Packages a base image built with `assembler base` carries, beyond debootstrap's minbase.
    kernel_package: str
    layout: str  # the disk shape of the distro's cloud images, a key of layouts.LAYOUTS
    # Packages the archive's docker needs beyond docker.io: trixie split the client into
    # docker-cli, which docker.io only recommends (and the build installs no Recommends).
    archive_docker_extra: tuple[str, ...] = ()


UBUNTU = Distro(
    name=GuestOS.UBUNTU,
    archive="http://archive.ubuntu.com/ubuntu",
    security_sibling="",
    security_suite="{release}-security",
    updates_suite="{release}-updates",
    components=("main", "universe"),
    keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    docker_ce_repo="https://download.docker.com/linux/ubuntu",
    docker_ce_key_url="https://download.docker.com/linux/ubuntu/gpg",
)

DEBIAN = Distro(
    name=GuestOS.DEBIAN,
    archive="http://deb.debian.org/debian",
    # Debian's separate security host is not reachable from build machines here, but its
    # content is mirrored under the archive host's /debian-security path.
    security_sibling="debian-security",
    security_suite="{release}-security",
    updates_suite="{release}-updates",
    components=("main",),
    keyring="/usr/share/keyrings/debian-archive-keyring.gpg",
    docker_ce_repo="https://download.docker.com/linux/debian",
    docker_ce_key_url="https://download.docker.com/linux/debian/gpg",
)

RELEASES: dict[str, Release] = {
    r.codename: r
    for r in (
        Release(UBUNTU, "jammy", "22.04", "3.10", "ubuntu", "linux-image-virtual", "jammy"),
        Release(UBUNTU, "noble", "24.04", "3.12", "ubuntu", "linux-image-virtual", "noble"),
        Release(DEBIAN, "bookworm", "12", "3.11", "debian", "linux-image-cloud-amd64", "debian"),
        Release(
            DEBIAN,
            "trixie",
            "13",
            "3.13",
            "debian",
            "linux-image-cloud-amd64",
            "debian",
            archive_docker_extra=("docker-cli",),
        ),
    )
}

# trovestack's default release for each guest OS.
DEFAULT_RELEASE: dict[GuestOS, str] = {GuestOS.UBUNTU: "jammy", GuestOS.DEBIAN: "bookworm"}


def release_for(guest_os: GuestOS, codename: str) -> Release | None:
    """The release row, or None when the codename is unknown or belongs to another OS."""
    rel = RELEASES.get(codename)
    if rel is None or rel.distro.name != guest_os:
        return None
    return rel


def security_archive(distro: Distro, archive: str) -> str:
    """The URL of the security suite for an archive URL (the distro's or a mirror's)."""
    if not distro.security_sibling:
        return archive
    parent = archive.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}/{distro.security_sibling}"


def apt_sources(release: Release, archive: str | None = None) -> str:
    """A one-line-style sources.list for a release: base, updates and security suites."""
    distro = release.distro
    base = (archive or distro.archive).rstrip("/")
    comps = " ".join(distro.components)
    suites = (release.codename, distro.updates_suite.format(release=release.codename))
    lines = [f"deb {base} {suite} {comps}" for suite in suites]
    security = security_archive(distro, base)
    lines.append(f"deb {security} {distro.security_suite.format(release=release.codename)} {comps}")
    return "\n".join(lines) + "\n"
