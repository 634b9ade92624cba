"""Boot tests: the images built by tests/image, and negative images derived from one of them.

Each negative image lacks exactly one thing. It is a qcow2 overlay over the built raw image,
edited with libguestfs (no extra build); all of them are edited in one appliance launch.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.builds import Built

# Negative image name -> the guestfs edit that takes one thing away.
Edit = Callable[[Any], None]


def _disable_docker(g: Any) -> None:
    # Masked, not just disabled: trove-image-loader Requires docker and would start it anyway.
    for unit in ("docker.service", "docker.socket"):
        g.rm_f(f"/etc/systemd/system/multi-user.target.wants/{unit}")
        g.rm_f(f"/etc/systemd/system/sockets.target.wants/{unit}")
        g.ln_sf("/dev/null", f"/etc/systemd/system/{unit}")


def _no_openstack_datasource(g: Any) -> None:
    g.write(
        "/etc/cloud/cloud.cfg.d/91-trove-datasources.cfg",
        b"datasource_list: [ ConfigDrive ]\n",
    )


def _no_sudoers(g: Any) -> None:
    g.rm("/etc/sudoers.d/60_trove_guest")


def _planted_key(g: Any) -> None:
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, check=True
    ).stdout
    g.mkdir_p("/root/.ssh")
    g.write("/root/.ssh/id_ed25519", key)
    g.chmod(0o600, "/root/.ssh/id_ed25519")


def _not_growable(g: Any) -> None:
    g.write(
        "/etc/cloud/cloud.cfg.d/99-no-grow.cfg",
        b"growpart:\n  mode: 'off'\nresize_rootfs: false\n",
    )


def _agent_disabled(g: Any) -> None:
    g.rm("/etc/systemd/system/multi-user.target.wants/guest-agent.service")


def _no_dev_key(g: Any) -> None:
    g.rm("/home/ubuntu/.ssh/id_ed25519")


def _build_leftover(g: Any) -> None:
    g.write("/usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n")
    g.chmod(0o755, "/usr/sbin/policy-rc.d")


# name -> (image it is derived from, edit, the check that must fail, a word of its detail)
NEGATIVES: dict[str, tuple[str, Edit, str, str]] = {
    "docker-disabled": ("raw_production", _disable_docker, "docker", "inactive"),
    "no-openstack-datasource": (
        "raw_production",
        _no_openstack_datasource,
        "datasource",
        "no facts",
    ),
    "no-sudoers": ("raw_production", _no_sudoers, "default-user", "passwordless sudo fails"),
    "planted-key": ("raw_production", _planted_key, "private-keys", "/root/.ssh/id_ed25519"),
    "not-growable": ("raw_production", _not_growable, "root-grown", "GiB"),
    "build-leftover": ("raw_production", _build_leftover, "build-secrets", "/usr/sbin/policy-rc.d"),
    "agent-disabled": ("raw_production", _agent_disabled, "agent", "disabled"),
    "no-dev-key": ("vmdk_dev", _no_dev_key, "agent", "guest-agent.service"),
}


@pytest.fixture(scope="session")
def negative_images(
    raw_production: Built, vmdk_dev: Built, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    import guestfs

    sources = {"raw_production": (raw_production, "raw"), "vmdk_dev": (vmdk_dev, "vmdk")}
    work = tmp_path_factory.mktemp("negatives")
    images = {}
    for name, (source, _, _, _) in NEGATIVES.items():
        built, fmt = sources[source]
        overlay = work / f"{name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", built.image, overlay],
            check=True,
        )
        # The harness reads what an image declares (agent, keys, user) from its manifest.
        manifest = built.image.with_name(built.image.name + ".manifest.json")
        shutil.copy(manifest, overlay.with_name(overlay.name + ".manifest.json"))
        images[name] = overlay
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(["force_tcg"])
    for overlay in images.values():
        g.add_drive_opts(str(overlay), format="qcow2")
    g.launch()
    try:
        roots = g.inspect_os()
        # One root per drive, and drives are named in the order they were added.
        for index, (_, edit, _, _) in enumerate(NEGATIVES.values()):
            device = f"/dev/sd{chr(ord('a') + index)}"
            root = next(r for r in roots if r.startswith(device))
            g.mount(root, "/")
            edit(g)
            g.umount_all()
        g.shutdown()
    finally:
        g.close()
    return images
