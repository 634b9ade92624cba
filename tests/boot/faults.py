"""Faults planted in built images, each taking away one thing a boot-test check looks for.

A negative image is a qcow2 overlay over a built image with one or more faults planted by
libguestfs (no extra build). Faults that are independent of each other share an image, so one
boot proves several checks can fail (`make test`); `make test-all` also boots each alone. A
fault that would hide another (by failing a check the other's check depends on) goes into a
different image: see COMBINED.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assembler import firmware

Edit = Callable[[Any], None]


@dataclass(frozen=True)
class Fault:
    source: str  # the built image it is planted in (a fixture of tests/builds.py)
    edit: Edit
    check: str  # the check that must fail
    cause: str  # a word of that check's detail
    # Other checks the fault fails as a matter of course (a file cloud-init cannot write is
    # also a cloud-init error).
    also_fails: tuple[str, ...] = ()
    # Boot-test options instead of (or beside) an edit: a fault of the launch, not the image.
    args: tuple[str, ...] = ()


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


def _no_uefi_loader(g: Any) -> None:
    """The ESP without its removable-media loader: BIOS still boots, UEFI finds nothing."""
    root = next(dev for dev, mp in g.mountpoints().items() if mp == "/")
    esp = firmware.esp_devices(g, g.part_to_dev(root))[0]
    g.mount(esp, "/boot/efi")
    g.rm(g.case_sensitive_path("/boot/efi" + firmware.LOADER))


def _agent_disabled(g: Any) -> None:
    g.rm("/etc/systemd/system/multi-user.target.wants/guest-agent.service")


def _no_dev_key(g: Any) -> None:
    g.rm("/home/ubuntu/.ssh/id_ed25519")


def _build_leftover(g: Any) -> None:
    g.write("/usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n")
    g.chmod(0o755, "/usr/sbin/policy-rc.d")


def _no_kernel(g: Any) -> None:
    for name in g.ls("/boot"):
        if name.startswith(("vmlinuz", "initrd.img")):
            g.rm(f"/boot/{name}")
    for link in ("/vmlinuz", "/vmlinuz.old", "/initrd.img", "/initrd.img.old"):
        g.rm_f(link)


def _cloud_init_error(g: Any) -> None:
    g.write("/etc/cloud/cloud.cfg.d/99-fault-bootcmd.cfg", b"bootcmd:\n  - [ sh, -c, 'exit 3' ]\n")


def _stale_hostname(g: Any) -> None:
    g.write("/etc/cloud/cloud.cfg.d/99-fault-hostname.cfg", b"preserve_hostname: true\n")
    g.write("/etc/hostname", b"stale-image-host\n")


def _trove_config_unwritable(g: Any) -> None:
    # cloud-init cannot write what Trove injects into an immutable directory.
    g.set_e2attrs("/etc/trove/conf.d", "i")


def _hostnic_masked(g: Any) -> None:
    g.rm_f("/etc/systemd/system/sockets.target.wants/docker-hostnic.socket")
    g.ln_sf("/dev/null", "/etc/systemd/system/docker-hostnic.socket")


def _no_image_loader(g: Any) -> None:
    g.rm("/usr/local/sbin/trove-image-loader")


def _agent_logs_elsewhere(g: Any) -> None:
    # Read after the injected trove-guestagent.conf (oslo.config reads a config dir in order).
    g.write("/etc/trove/conf.d/zz-fault-log.conf", b"[DEFAULT]\nlog_dir = /tmp\n")


def _volume_left_unmounted(g: Any) -> None:
    # The agent formats and mounts its device unless it is mounted already; pointing it at the
    # root's own device leaves the mount point a plain directory on the root filesystem.
    root = next(dev for dev, mp in g.mountpoints().items() if mp == "/")
    device = f"/dev/vda{g.part_to_partnum(root)}"  # as the guest names its first virtio disk
    conf = f"[mysql]\ndevice_path = {device}\n"
    g.write("/etc/trove/conf.d/zz-fault-volume.conf", conf.encode())


def _no_edit(g: Any) -> None:
    """A fault of the launch alone (its boot-test options): the image stays as built."""


PROD, DEV = "raw_production", "vmdk_dev"
EMBEDDED = "qcow2_embedded"
POSTGRESQL = ("--datastore", "postgresql:15")
MARIADB_EMBEDDED = ("--datastore", "mariadb:10.11", "--no-registry")
FAULTS: dict[str, Fault] = {
    "no-kernel": Fault(PROD, _no_kernel, "boot", "no kernel output"),
    "no-openstack-datasource": Fault(PROD, _no_openstack_datasource, "datasource", "no facts"),
    "cloud-init-error": Fault(PROD, _cloud_init_error, "cloud-init", "errors"),
    "stale-hostname": Fault(PROD, _stale_hostname, "hostname", "stale-image-host"),
    "no-sudoers": Fault(PROD, _no_sudoers, "default-user", "passwordless sudo fails"),
    "trove-config-unwritable": Fault(
        PROD, _trove_config_unwritable, "injected-files", "missing", also_fails=("cloud-init",)
    ),
    "docker-disabled": Fault(PROD, _disable_docker, "docker", "masked"),
    "not-growable": Fault(PROD, _not_growable, "root-grown", "GiB"),
    # A launch fault: an address the guest probes as unforwarded is forwarded after all.
    "leaked-forward": Fault(
        PROD, _no_edit, "network-isolation", "169.254.0.103:80", args=("--leak-forward",)
    ),
    "no-uefi-loader": Fault(
        PROD, _no_uefi_loader, "boot", "found nothing to boot", args=("--firmware", "uefi")
    ),
    "planted-key": Fault(PROD, _planted_key, "private-keys", "/root/.ssh/id_ed25519"),
    "build-leftover": Fault(PROD, _build_leftover, "build-secrets", "/usr/sbin/policy-rc.d"),
    "hostnic-masked": Fault(PROD, _hostnic_masked, "hostnic", "docker-hostnic.socket is"),
    "no-image-loader": Fault(PROD, _no_image_loader, "image-loader", "failed"),
    "agent-disabled": Fault(PROD, _agent_disabled, "agent", "disabled"),
    "no-dev-key": Fault(DEV, _no_dev_key, "agent", "guest-agent.service"),
    "agent-logs-elsewhere": Fault(PROD, _agent_logs_elsewhere, "agent-log", "/tmp/"),
    "wrong-bus": Fault(
        PROD,
        _no_edit,
        "agent-rpc",
        "guestagent.",
        args=("--transport-url", "rabbit://guest:guest@169.254.0.100:5673/", "--rabbit"),
    ),
    "volume-left-unmounted": Fault(PROD, _volume_left_unmounted, "agent-volume", "/var/lib/mysql"),
    # A database through Trove's prepare, from the harness's registry (the PostgreSQL test
    # double): what each datastore check needs, taken away at launch. Short waits: a negative
    # need not spend the agent's whole state_change_wait_time.
    "registry-not-insecure": Fault(
        PROD,
        _no_edit,
        "datastore-image",
        "not in the guest's docker",
        also_fails=("image-loader",),  # it is what pulls, and the pull fails
        args=(*POSTGRESQL, "--no-insecure-registry"),
    ),
    "entrypoint-dies": Fault(
        PROD,
        _no_edit,
        "datastore-prepare",
        "failed",
        args=(
            *POSTGRESQL,
            "--datastore-source",
            "test-double:postgresql-broken",
            "--prepare-wait",
            "60",
        ),
    ),
    # On the image with MariaDB in docker's store: no pull to wait for.
    "user-never-created": Fault(
        EMBEDDED,
        _no_edit,
        "datastore-query",
        "trove_boot",
        args=(*MARIADB_EMBEDDED, "--fault", "prepare-without-user", "--prepare-wait", "600"),
    ),
}

# Images holding several faults, none hiding another. Between them they fail every check but
# `boot` and `datasource`, whose faults leave nothing else to judge and boot alone (and stop
# as soon as the console shows the failure).
COMBINED: dict[str, tuple[str, ...]] = {
    # docker, sudo and Trove's config are what the agent needs: its checks wait on them.
    "combined-agent-prerequisites": (
        "cloud-init-error", "stale-hostname", "no-sudoers", "trove-config-unwritable",
        "docker-disabled",
    ),
    # The agent off; checks that wait on nothing of the agent's.
    "combined-agent-off": (
        "agent-disabled", "not-growable", "planted-key", "build-leftover", "hostnic-masked",
        "registry-not-insecure", "leaked-forward",
    ),
    # The agent up and answering, its surroundings broken.
    "combined-agent-surroundings": (
        "no-image-loader", "agent-logs-elsewhere", "volume-left-unmounted",
    ),
}  # fmt: skip
