"""apt inside the appliance: no service starts, no fsync, packages installed from the .debs the
host resolved and fetched (assembler.hostapt); then clean up.

The guest's own apt sources are never edited, and the appliance never reads an index: apt in
the guest is given the .deb files themselves, so a `--mirror` (or the distro archive) applies
to the build only and the image keeps the sources it came with.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from assembler.config import BuildConfig
from assembler.guest import sh, write

WORK = "/var/tmp/assembler-apt"
DEBS = f"{WORK}/debs"
POLICY_RC_D = "/usr/sbin/policy-rc.d"
UNSAFE_IO = "/etc/dpkg/dpkg.cfg.d/assembler-unsafe-io"

APT_OPTIONS = (
    f"-o Dir::Etc::SourceList={WORK}/sources.list",
    f"-o Dir::Etc::SourceParts={WORK}/sources.list.d",
    "-o Acquire::Retries=3",
    "-o Dpkg::Options::=--force-confdef",
    "-o Dpkg::Options::=--force-confold",
)


def apt_get(g: Any, step: str, args: str) -> str:
    """Run apt-get non-interactively against the build's sources."""
    return sh(
        g,
        step,
        f"DEBIAN_FRONTEND=noninteractive apt-get -q -y {' '.join(APT_OPTIONS)} {args}",
    )


def prepare(g: Any, cfg: BuildConfig) -> None:
    # Empty: apt in the guest must never fetch anything (every .deb is given to it).
    write(g, f"{WORK}/sources.list", "")
    g.mkdir_p(f"{WORK}/sources.list.d")
    # Maintainer scripts must not start daemons inside the appliance (no systemd runs there,
    # so invoke-rc.d would fall back to init scripts and start dockerd in the appliance).
    if g.exists(POLICY_RC_D):
        g.mv(POLICY_RC_D, f"{WORK}/policy-rc.d.orig")
    write(g, POLICY_RC_D, "#!/bin/sh\nexit 101\n", mode=0o755)
    # The disk is a throwaway overlay until the build succeeds: fsync buys nothing.
    write(g, UNSAFE_IO, "force-unsafe-io\n")


def install_debs(g: Any, debs: list[tuple[Path, str]], step: str) -> None:
    """One apt transaction over the given .deb files ([(host path, file name)]): apt orders
    the unpacks and configures (Pre-Depends) as for packages from an archive."""
    if not debs:
        return
    g.mkdir_p(DEBS)
    for host_path, name in debs:
        g.upload(str(host_path), f"{DEBS}/{name}")
    paths = [f"{DEBS}/{name}" for _, name in debs]
    apt_get(g, step, "install --no-install-recommends " + shlex.join(paths))
    g.rm_rf(DEBS)


def cleanup(g: Any, cfg: BuildConfig) -> None:
    g.rm_f(POLICY_RC_D)
    if g.exists(f"{WORK}/policy-rc.d.orig"):
        g.mv(f"{WORK}/policy-rc.d.orig", POLICY_RC_D)
    g.rm_f(UNSAFE_IO)
    apt_get(g, "apt-cleanup", "clean")
    g.rm_rf(WORK)
    # Lists came from the build's sources; the guest refreshes its own at first use.
    sh(g, "apt-cleanup", "find /var/lib/apt/lists -mindepth 1 -not -name lock -delete")
