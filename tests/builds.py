"""Real builds from the Debian base, shared by the image and boot tests (each built once per
session); tests/conftest.py makes the fixtures visible everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Built:
    image: Path
    manifest: dict[str, Any]
    args: tuple[str, ...]
    env: dict[str, str]
    stderr: str

    def args_to(self, out: Path) -> list[str]:
        """The arguments of this build, writing `out` instead (without --debug: its
        tracebacks would hide whether an error is one line)."""
        argv = [a for a in self.args if a != "--debug"]
        argv[argv.index("-o") + 1] = str(out)
        return argv


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 1200,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assembler", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ASSEMBLER_ACCEL": "tcg", **(env or {})},
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def build(
    base: Path,
    out: Path,
    *args: str,
    env: dict[str, str] | None = None,
    release: str = "bookworm",
) -> Built:
    argv = (
        "--guest-os",
        "debian",
        "--release",
        release,
        "--base",
        str(base),
        "-o",
        str(out),
        *args,
    )
    proc = run_cli(*argv, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    return Built(out, manifest, argv, env or {}, proc.stderr)


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


# Three builds that between them cover each format the issue names and the options that change
# what lands in the image. They share one system layer (same release, base and size), as an
# operator's builds would; tests/image/test_layer_rebuilds.py builds another size (`full`).
@pytest.fixture(scope="session")
def raw_production(debian_base: Path, images_dir: Path) -> Built:
    return build(
        debian_base,
        images_dir / "prod.raw",
        "--no-dev-mode",
        "--debug",  # its log is checked for secrets (tests/image/test_build.py)
        env={"TROVE_ROOT_PASSWORD": "Sup3r-secret-root"},
    )


@pytest.fixture(scope="session")
def qcow2_custom(debian_base: Path, images_dir: Path) -> Built:
    return build(
        debian_base,
        images_dir / "custom.qcow2",
        "--guest-username",
        "trove",
        "--datasources",
        "OpenStack",
        env={"DIB_CLOUD_INIT_ETC_HOSTS": "false"},
    )


@pytest.fixture(scope="session")
def vmdk_dev(debian_base: Path, images_dir: Path) -> Built:
    return build(debian_base, images_dir / "dev.vmdk", "--dev-mode", "--debug")


# Debian 13 as a guest (`full`): its own base, built here from trixie's archive, and the two
# kinds of image, each booted with the agent (tests/boot/test_boot.py).
@pytest.fixture(scope="session")
def trixie_base() -> Path:
    from assembler.accel import Accel
    from assembler.base import BaseSpec, cached_base
    from assembler.distros import RELEASES

    return cached_base(BaseSpec(RELEASES["trixie"]), Accel.TCG)


@pytest.fixture(scope="session")
def trixie_production(trixie_base: Path, images_dir: Path) -> Built:
    return build(trixie_base, images_dir / "trixie.qcow2", "--no-dev-mode", release="trixie")


@pytest.fixture(scope="session")
def trixie_dev(trixie_base: Path, images_dir: Path) -> Built:
    return build(trixie_base, images_dir / "trixie-dev.raw", "--dev-mode", release="trixie")


@pytest.fixture(scope="session")
def test_doubles() -> dict[str, Path]:
    """The stand-in datastore images (OCI layouts built from Debian's packages, cached per
    machine): test doubles of the official postgres and mariadb images, which Docker Hub
    would serve and this machine cannot reach."""
    from assembler.standin import standin_layout

    return {name: standin_layout(name) for name in ("postgresql", "mariadb")}


# The production build with a test double embedded: the same system and config layers as
# raw_production, then a datastore-images layer and its own agent layer above it. MariaDB goes
# into docker's store at build time (the default); PostgreSQL is loaded at the first boot
# (`full`: the other way to land, whose delay the boot measures).
@pytest.fixture(scope="session")
def qcow2_embedded(debian_base: Path, images_dir: Path, test_doubles: dict[str, Path]) -> Built:
    return _embedded(debian_base, images_dir / "embedded.qcow2", test_doubles, "mariadb")


@pytest.fixture(scope="session")
def qcow2_first_boot(debian_base: Path, images_dir: Path, test_doubles: dict[str, Path]) -> Built:
    out = images_dir / "first-boot.qcow2"
    return _embedded(debian_base, out, test_doubles, "postgresql", "--embed-mode", "first-boot")


EMBEDDED = {
    "postgresql": "trove-test-double/postgresql:15",
    "mariadb": "trove-test-double/mariadb:10.11",
}


def _embedded(base: Path, out: Path, doubles: dict[str, Path], name: str, *args: str) -> Built:
    embed = f"oci:{doubles[name]}={EMBEDDED[name]}"
    env = {"TROVE_ROOT_PASSWORD": "Sup3r-secret-root"}
    return build(base, out, "--no-dev-mode", "--datastore-image", embed, *args, env=env)


class Inspector:
    """Read-only guestfs handles on built images, one appliance per image for the session."""

    def __init__(self) -> None:
        self.handles: dict[Path, Any] = {}

    def __call__(self, image: Path, fmt: str) -> Any:
        if image not in self.handles:
            import guestfs

            g = guestfs.GuestFS(python_return_dict=True)
            g.set_backend("direct")
            g.set_backend_settings(["force_tcg"])
            g.add_drive_opts(str(image), format=fmt, readonly=True)
            g.launch()
            root = g.inspect_os()[0]
            mounts = g.inspect_get_mountpoints(root)
            for mp in sorted(mounts, key=len):
                g.mount_ro(mounts[mp], mp)
            self.handles[image] = g
        return self.handles[image]

    def close(self) -> None:
        for g in self.handles.values():
            g.close()


@pytest.fixture(scope="session")
def inspect() -> Iterator[Inspector]:
    inspector = Inspector()
    yield inspector
    inspector.close()
