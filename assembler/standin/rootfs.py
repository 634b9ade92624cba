"""The root tree of a stand-in image: debootstrap minbase, the server's packages, our entrypoint.

Built natively on the host as the base image's tree is (assembler.base's debootstrap and
namespace helpers, reused by import), then stripped of what a container never reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from assembler import base
from assembler.distros import RELEASES, apt_sources
from assembler.errors import BuildError, CommandError
from assembler.resources import resource_files
from assembler.run import run
from assembler.standin.specs import DATABASE_UID, RELEASE, StandIn

log = logging.getLogger(__name__)

STEP = "standin"

# Runs inside the new root with the packages as arguments: nothing may start, no Recommends.
INSTALL_SCRIPT = r"""set -eu
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt="apt-get -y -o Acquire::Languages=none -o APT::Install-Recommends=false"
apt="$apt -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
$apt update
$apt dist-upgrade
$apt install "$@"
$apt clean
"""

# Common to every stand-in, after the packages: the agent's uid and the locale servers expect.
USER_SCRIPT = r"""set -eu
# uid 1001 is the agent's `database` user; initdb and mariadbd look their own uid up.
groupadd --gid "$1" database
useradd --uid "$1" --gid "$1" --home-dir "$2" --no-create-home --shell /usr/sbin/nologin database
# en_US.utf8, which Trove's postgresql config names, besides C.UTF-8 that glibc has built in.
localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8
"""

# Never read in a container: documentation, translations, package indexes, caches, logs.
_STRIP_TREES = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
                "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf")  # fmt: skip
_KEEP = {"usr/share/locale/locale.alias"}  # localedef and setlocale read it

# A container runtime mounts its own; a copy of the build host's would leak into the image.
_HOST_FILES = ("etc/resolv.conf", "etc/hostname")
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def build_rootfs(spec: StandIn, root: Path, mirror: str) -> str:
    """Build spec's tree at root; returns the installed version of spec.version_package."""
    release = RELEASES[RELEASE]
    _timed("debootstrap", lambda: _bootstrap(root, mirror))
    (root / "etc/apt/sources.list").write_text(apt_sources(release, mirror))
    _timed("package install", lambda: _chroot(root, INSTALL_SCRIPT, *spec.packages))
    _chroot(root, USER_SCRIPT, str(DATABASE_UID), spec.home)
    _chroot(root, spec.setup)
    version = _package_version(root, spec.version_package)
    lay_overlay(spec, root)
    _strip(root)
    return version


def lay_overlay(spec: StandIn, root: Path) -> list[str]:
    """Copy overlays/standin/<name>/ into root; returns the image paths it wrote."""
    written: list[str] = []
    for src, rel in overlay_files(spec):
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        shutil.copyfile(src, dest)
        # Root-owned whoever checked out the repository; scripts under a bin dir run.
        os.chown(dest, 0, 0)
        dest.chmod(0o755 if dest.parent.name in ("bin", "sbin") else 0o644)
        written.append(rel)
    return written


def overlay_files(spec: StandIn) -> list[tuple[Path, str]]:
    """(source file, path in the image) for each file of the stand-in's overlay, sorted."""
    top = resource_files(spec.overlay)
    if not top:
        return []
    base_dir = next(p for p in top[0].parents if p.as_posix().endswith(f"/{spec.overlay}"))
    return [(p, p.relative_to(base_dir).as_posix()) for p in top]


def _bootstrap(root: Path, mirror: str) -> None:
    try:
        base._bootstrap(base.BaseSpec(RELEASES[RELEASE], mirror=mirror), root)
    except BuildError as exc:  # it names the base step; the failure is this one's
        raise BuildError(STEP, str(exc).split(": ", 1)[-1]) from exc


def _chroot(root: Path, script: str, *args: str) -> None:
    """Run a shell script in root as root, with /proc, /sys and /dev/pts, in a private namespace."""
    mount_and_chroot = (
        'script="$1"; shift; mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
        'mount --bind /dev/pts "$0/dev/pts" && exec chroot "$0" /bin/sh -c "$script" sh "$@"'
    )
    argv = ["sh", "-c", mount_and_chroot, str(root), script, *args]
    try:
        run(base._isolated(argv), env=base._host_env(), timeout=base.HOST_TIMEOUT_S)
    except CommandError as exc:
        raise BuildError(STEP, f"in the image's root: {base._tail(exc)}") from exc


def _package_version(root: Path, package: str) -> str:
    argv = ["chroot", str(root), "dpkg-query", "--show", "--showformat=${Version}", package]
    return run(argv, env=base._host_env()).strip()


def _strip(root: Path) -> None:
    for rel in _STRIP_TREES:
        _empty_dir(root / rel)
    locale = root / "usr/share/locale"
    for child in locale.iterdir() if locale.is_dir() else []:
        if child.relative_to(root).as_posix() not in _KEEP:
            _remove(child)
    # Keep the log directories (packages' configs name them), drop what the build wrote.
    for dirpath, _dirs, files in os.walk(root / "var/log"):
        for name in files:
            (Path(dirpath) / name).unlink()
    for path in (root / "var/lib/dpkg").glob("*-old"):
        path.unlink()
    for rel in _HOST_FILES:
        (root / rel).unlink(missing_ok=True)
    (root / "etc/hosts").write_text(_HOSTS)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _empty_dir(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove(child)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _timed(what: str, func: Callable[[], None]) -> None:
    start = time.monotonic()
    log.info("standin: %s...", what)
    func()
    log.info("standin: %s took %.0f s", what, time.monotonic() - start)
