"""The peer: virt-customize (Debian's guestfs-tools) doing a production build's work on a copy of
the base, the way its users would write it, then `qemu-img convert`.

Same work as ours: the same packages in one apt transaction (no recommends, no daemons started),
the same files (copied out of the image our build made, so nothing differs by hand), the same
agent wheelhouse copied in and installed with the guest's own venv and pip (--no-index), the same
hygiene. What the peer does not do is what virt-customize has no step for: growing the root is a
growpart + resize2fs in the guest, and nothing trims free space before the convert.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from assembler.accel import Accel, resolve
from assembler.agent.venv import VENV_PREFIX
from assembler.config import DockerSource
from assembler.guest import appliance
from assembler.packages import DOCKER, RUNTIME_PACKAGES
from assembler.steps.agent import ENABLED as AGENT_UNITS
from assembler.steps.hygiene import REMOVE
from assembler.steps.trove import DIRECTORIES

USER = "ubuntu"
# Every file our guest layer writes, taken from our image so both tools install the same bytes.
FILES = (
    "/etc/sudoers.d/60_trove_guest",
    "/etc/cloud/cloud.cfg.d/91-trove-datasources.cfg",
    "/etc/cloud/cloud.cfg.d/92-trove-default-user.cfg",
    "/etc/cloud/cloud.cfg.d/93-trove-etc-hosts.cfg",
    "/etc/systemd/system/guest-agent.service",
    "/etc/systemd/system/docker-hostnic.service",
    "/etc/systemd/system/docker-hostnic.socket",
    "/etc/systemd/system/trove-image-loader.service",
    "/etc/logrotate.d/guest-agent",
    "/usr/local/sbin/trove-image-loader",
    "/usr/local/sbin/fix-default-route",
)


@dataclass(frozen=True)
class PeerInputs:
    base: Path
    root_device: str  # e.g. /dev/sda2, found by inspecting the base
    size: str  # the disk size, as qemu-img takes it
    files: Path  # a tree holding FILES at their guest paths
    wheelhouse: Path  # the agent's wheels
    agent: str  # the requirement pip installs, e.g. trove==26.0.0


def collect_files(image: Path, dest: Path) -> None:
    """Copy FILES out of a qcow2 our build made (read-only appliance)."""
    with appliance([(image, "qcow2")], accel=resolve(Accel.AUTO), readonly=True) as g:
        mounts = g.inspect_get_mountpoints(g.inspect_os()[0])
        for mp in sorted(mounts, key=len):
            g.mount_ro(mounts[mp], mp)
        for path in FILES:
            local = dest / path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            g.download(path, str(local))


def root_device(base: Path) -> str:
    """The base's root filesystem device in the appliance (e.g. /dev/sda2)."""
    with appliance([(base, "qcow2")], accel=resolve(Accel.AUTO), readonly=True) as g:
        return str(g.inspect_get_mountpoints(g.inspect_os()[0])["/"])


def customize_args(inputs: PeerInputs) -> list[str]:
    packages = sorted({*RUNTIME_PACKAGES, *DOCKER[DockerSource.ARCHIVE].packages})
    disk = inputs.root_device.rstrip("0123456789")
    part = inputs.root_device[len(disk) :]
    apt = (
        "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Options::=--force-confdef "
        "-o Dpkg::Options::=--force-confold"
    )
    wheels = PurePosixPath("/tmp") / inputs.wheelhouse.name
    venv = str(VENV_PREFIX)
    dirs = " ".join(f"{path}" for path, _ in DIRECTORIES)
    args = [
        # Maintainer scripts must not start daemons in the appliance (as in our apt step).
        "--write", "/usr/sbin/policy-rc.d:#!/bin/sh\nexit 101\n",
        "--chmod", "0755:/usr/sbin/policy-rc.d",
        # Grown first, as ours (the base has growpart; resize2fs grows ext4 online).
        "--run-command", f"growpart {disk} {part} && resize2fs {inputs.root_device}",
        "--run-command", f"{apt} update",
        "--run-command", f"{apt} install --no-install-recommends {shlex.join(packages)}",
        "--run-command", "systemctl enable docker.service containerd.service",
        "--run-command",
        f"id -u {USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {USER}; "
        f"usermod -aG sudo,docker {USER}; passwd -l {USER}; usermod -p '*' root",
        "--run-command", f"mkdir -p {dirs} && chown {USER}:root {dirs} && "
        "chmod 750 /etc/trove/conf.d /etc/trove/certs",
        "--copy-in", f"{inputs.wheelhouse}:/tmp",
        "--run-command",
        f"python3 -m venv {venv} && {venv}/bin/pip install -q --no-index "
        f"--find-links {wheels} {shlex.quote(inputs.agent)} && chown -R {USER}:root {venv}",
        "--run-command",
        f"ln -sf {venv}/bin/trove-guestagent /usr/local/bin/guest-agent && "
        f"ln -sf {venv}/bin/trove-docker-plugin /usr/local/bin/trove-docker-plugin",
    ]  # fmt: skip
    for path in FILES:
        args += ["--upload", f"{inputs.files / path.lstrip('/')}:{path}"]
    args += [
        "--chmod", "0440:/etc/sudoers.d/60_trove_guest",
        "--chmod", "0755:/usr/local/sbin/trove-image-loader",
        "--chmod", "0755:/usr/local/sbin/fix-default-route",
        "--run-command", f"systemctl enable {' '.join(AGENT_UNITS)}",
        # Hygiene, as ours: apt's leftovers, identity, logs.
        "--run-command", f"{apt} clean; rm -rf /var/lib/apt/lists/* {wheels}",
        "--delete", "/usr/sbin/policy-rc.d",
        "--run-command", "rm -rf " + " ".join(REMOVE),
        "--truncate", "/etc/machine-id",
        "--run-command", "find /var/log -type f -exec truncate -s 0 {} +",
    ]  # fmt: skip
    return args


def run_peer(
    inputs: PeerInputs, work: Path, tcg: bool, compress: bool = True, tuned: bool = True
) -> dict[str, Any]:
    """One timed peer build; returns its seconds (total and per phase) and output path.
    Tuned, the appliance gets what ours gets (2 vCPUs, 2 GiB); else virt-customize's own
    defaults, as its users run it. TCG only where ours uses TCG."""
    disk = work / "peer-work.qcow2"
    out = work / ("peer.qcow2" if compress else "peer-plain.qcow2")
    started = time.monotonic()
    shutil.copyfile(inputs.base, disk)
    _run(["qemu-img", "resize", "-q", str(disk), inputs.size])
    copied = time.monotonic()
    _run(
        ["virt-customize", "-q", "--format", "qcow2", "-a", str(disk), "--network",
         *(["--smp", "2", "--memsize", "2048"] if tuned else []), *customize_args(inputs)],
        env={
            "LIBGUESTFS_BACKEND": "direct",
            "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg" if tcg else "",
        },
    )  # fmt: skip
    customized = time.monotonic()
    _run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", "-m", "8", "-W",
         *(["-c"] if compress else []), str(disk), str(out)]
    )  # fmt: skip
    done = time.monotonic()
    return {
        "seconds": done - started,
        "phases": {
            "copy+resize": copied - started,
            "virt-customize": customized - copied,
            "convert": done - customized,
        },
        "output": out,
        "work_disk": disk,
    }


def convert_plain(disk: Path, out: Path) -> None:
    _run(["qemu-img", "convert", "-q", "-O", "qcow2", "-m", "8", "-W", str(disk), str(out)])


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    import os

    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
