"""Distro facts, and the Ubuntu paths that can't be exercised against Ubuntu's servers here."""

from __future__ import annotations

from assembler.config import DockerSource
from assembler.distros import RELEASES, apt_sources, security_archive
from assembler.packages import DOCKER
from assembler.steps.docker import docker_ce_source


def test_ubuntu_sources_keep_security_in_the_archive() -> None:
    text = apt_sources(RELEASES["jammy"])
    assert text.splitlines() == [
        "deb http://archive.ubuntu.com/ubuntu jammy main universe",
        "deb http://archive.ubuntu.com/ubuntu jammy-updates main universe",
        "deb http://archive.ubuntu.com/ubuntu jammy-security main universe",
    ]


def test_debian_security_follows_a_mirror_to_its_sibling_path() -> None:
    text = apt_sources(RELEASES["bookworm"], "http://mirror.internal:8080/debian/")
    assert text.splitlines() == [
        "deb http://mirror.internal:8080/debian bookworm main",
        "deb http://mirror.internal:8080/debian bookworm-updates main",
        "deb http://mirror.internal:8080/debian-security bookworm-security main",
    ]
    assert (
        security_archive(RELEASES["bookworm"].distro, "http://m/debian")
        == "http://m/debian-security"
    )


def test_ubuntu_mirror_replaces_every_suite() -> None:
    text = apt_sources(RELEASES["noble"], "http://mirror.internal/ubuntu")
    assert all(
        line.startswith("deb http://mirror.internal/ubuntu noble") for line in text.splitlines()
    )


def test_docker_ce_source_is_pinned_to_its_key() -> None:
    assert docker_ce_source(RELEASES["jammy"]) == (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] "
        "https://download.docker.com/linux/ubuntu jammy stable\n"
    )
    assert "linux/debian bookworm" in docker_ce_source(RELEASES["bookworm"])
    assert DOCKER[DockerSource.DOCKER_CE].needs_docker_repo
    assert "docker-ce" in DOCKER[DockerSource.DOCKER_CE].packages
    assert not DOCKER[DockerSource.ARCHIVE].needs_docker_repo


def test_guest_pythons() -> None:
    assert {r.codename: r.python for r in RELEASES.values()} == {
        "jammy": "3.10",
        "noble": "3.12",
        "bookworm": "3.11",
        "trixie": "3.13",
    }


def test_trixie_gets_the_docker_client_that_docker_io_only_recommends() -> None:
    from assembler.config import DockerSource
    from assembler.packages import docker_packages

    assert "docker-cli" in docker_packages(DockerSource.ARCHIVE, RELEASES["trixie"])
    assert "docker-cli" not in docker_packages(DockerSource.ARCHIVE, RELEASES["bookworm"])
    # Docker's own repository ships its client as docker-ce-cli on every release.
    assert docker_packages(DockerSource.DOCKER_CE, RELEASES["trixie"]) == (
        "docker-ce", "docker-ce-cli", "containerd.io",
    )  # fmt: skip
