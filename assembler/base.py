"""The base image: a distro cloud image built from the package archive with debootstrap.

What later steps rely on: a GPT disk laid out as the distro's own cloud images are
(assembler.layouts: the ext4 root `cloudimg-rootfs` physically last, so it can be grown to the
end of a larger disk; a BIOS boot partition and an ESP mounted at /boot/efi; noble's separate
/boot); GRUB for BIOS and for UEFI on the serial console; cloud-init, sshd, sudo and python3;
and no machine identity (empty machine-id, no ssh host keys, no apt lists).

The root tree is built natively on the host (debootstrap, then apt in a chroot) because dpkg in
the TCG appliance is several times slower. The host writes the partition table (sfdisk keeps
the distros' partition numbers); one appliance launch then makes the filesystems, lays the tree
on them and installs the boot loaders, which need the real disk to probe.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler import cancel, leftovers, progress
from assembler.accel import Accel
from assembler.digestmemo import sha256_of
from assembler.distros import Release, apt_sources
from assembler.errors import BuildError, CommandError, UsageError
from assembler.fetch import FetchedBase, Origin
from assembler.guest import appliance, sh
from assembler.layouts import LAYOUTS, Firmware, Layout
from assembler.paths import cache_dir
from assembler.resources import resource
from assembler.run import run
from assembler.sources import HashAlgo

log = logging.getLogger(__name__)

STEP = "base"

# Bump whenever the recipe below changes in a way that changes the image: it is part of the key.
RECIPE_VERSION = 2  # 2: the distros' hybrid layouts, GRUB for UEFI too

# Beyond debootstrap's minbase and the release's kernel; installed without Recommends.
PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "dbus",
    "grub-pc",
    "grub-efi-amd64-bin",  # GRUB for UEFI; unlike grub-efi-amd64 it installs beside grub-pc
    "dosfstools",  # fsck.vfat for the ESP at boot
    "cloud-init",
    "cloud-guest-utils",  # growpart, which cloud-init uses to grow the root partition
    "openssh-server",
    "sudo",
    "python3",
    # cloud-init's ENI renderer brings the network up with these.
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "e2fsprogs",
    "ca-certificates",
    "gnupg",  # apt-key material for the extra repositories later steps add
    "zstd",  # initramfs-tools compresses with it and warns on every kernel update without it
)

# The boot loader for each firmware, run in the laid-down tree ({disk}: the appliance's disk).
# --removable --no-nvram: a cloud's NVRAM starts empty, so only EFI/BOOT/BOOTX64.EFI boots.
GRUB_INSTALL: dict[Firmware, str] = {
    Firmware.BIOS: "grub-install --target=i386-pc {disk}",
    Firmware.UEFI: (
        "grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram"
    ),
}

# Files laid into the tree as they are, from overlays/base/<same path>.
OVERLAY_FILES: tuple[str, ...] = (
    "etc/default/grub.d/50-cloudimg.cfg",  # GRUB and the kernel on the serial console
    "etc/default/locale",
    "etc/hostname",  # debootstrap copied the build host's; cloud-init sets the real one
    "etc/hosts",
)

# A network stall must not hang a build forever; a healthy run takes a minute or two.
HOST_TIMEOUT_S = 1800

# Runs inside the new root, natively on the host, with the packages as arguments.
INSTALL_SCRIPT = r"""set -eu
# Nothing may start in the build chroot: invoke-rc.d asks policy-rc.d first, 101 means "no".
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
# GRUB goes onto the image's own disk later; grub-pc must not look for one (or the host's) now,
# nor ask which one on upgrades in the guest.
debconf-set-selections <<'EOF'
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF
apt="apt-get -y -o Acquire::Languages=none"
apt="$apt -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
$apt update
# debootstrap takes the release as first published; a cloud image carries its updates.
$apt dist-upgrade
$apt install --no-install-recommends "$@"
$apt clean
"""


@dataclass(frozen=True)
class BaseSpec:
    release: Release  # from distros.RELEASES
    mirror: str | None = None  # archive URL; None = release.distro.archive
    size_gb: int = 2  # virtual disk size; the root (~600 MB used) is grown by later steps
    layout: str | None = None  # a key of layouts.LAYOUTS; None: the release's own

    @property
    def disk_layout(self) -> Layout:
        return LAYOUTS[self.layout or self.release.layout]


def base_key(spec: BaseSpec) -> str:
    """Hex digest of everything that shapes the base, for the content-addressed cache."""
    release = spec.release
    inputs = {
        "recipe": RECIPE_VERSION,
        "distro": str(release.distro.name),
        "codename": release.codename,
        "archive": _archive(spec),
        "sources": apt_sources(release, _archive(spec)),
        "keyring": release.distro.keyring,
        "packages": [release.kernel_package, *PACKAGES],
        "install_script": INSTALL_SCRIPT,
        "overlay": {rel: hashlib.sha256(data).hexdigest() for rel, data in _overlay_files()},
        "size_gb": spec.size_gb,
        # What the layout makes (partition table, filesystems and their mounts), not its name.
        "layout": [spec.disk_layout.sfdisk_script("disk"), spec.disk_layout.fstab()],
        "grub": {str(f): GRUB_INSTALL[f] for f in spec.disk_layout.firmware},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def archive_base(
    spec: BaseSpec, accel: Accel, fetch: Callable[[str, Path], bool] | None = None
) -> FetchedBase:
    """`--base archive`: the base from the package archive, built once and cached by its key
    (or fetched by `fetch(key, path)`, from builders that share it, when that finds it)."""
    path = cached_base(spec, accel, fetch)
    return FetchedBase(
        path=path, url=_archive(spec), algo=HashAlgo.SHA256, digest=sha256_of(path),
        signed=False, signer=None, origin=Origin.ARCHIVE,
    )  # fmt: skip


def cached_base(
    spec: BaseSpec, accel: Accel, fetch: Callable[[str, Path], bool] | None = None
) -> Path:
    """cache_dir()/bases/<key>.qcow2, built once even when several callers race for it."""
    key = base_key(spec)
    path = cache_dir() / "bases" / f"{key}.qcow2"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    leftovers.sweep()
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", path.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        # Whoever held the lock may have built it meanwhile.
        if not path.exists() and not (fetch is not None and fetch(key, path)):
            check_host(spec)
            build_base(spec, path, accel)
    return path


def build_base(spec: BaseSpec, output: Path, accel: Accel) -> None:
    """Build the base qcow2 at `output`; on any failure nothing is left there or beside it."""
    check_host(spec)
    output.parent.mkdir(parents=True, exist_ok=True)
    disk = leftovers.partial(output)
    try:
        scratch = Path(tempfile.mkdtemp(prefix="base-", dir=_scratch_root()))
        try:
            root = scratch / "root"
            tarball = scratch / "rootfs.tar"
            _timed("debootstrap", _bootstrap, spec, root)
            _timed("package install", _install_packages, spec, root)
            _make_generic(root)
            _pack(root, tarball)
            _remove_tree(root)  # halves the peak disk use of a build
            _create_disk(disk, scratch / "disk.raw", spec)
            _timed("appliance phase", _lay_down, disk, tarball, spec.disk_layout, accel)
        finally:
            _remove_tree(scratch)
        disk.chmod(0o644)
        _fsync(disk)
        disk.replace(output)
    except BaseException:
        disk.unlink(missing_ok=True)
        raise
    log.info("base image ready: %s", output)


def check_host(spec: BaseSpec) -> None:
    """UsageError, with a hint, when this host cannot build the base for this release."""
    release = spec.release
    what = f"a {release.distro.name} {release.codename} base"
    if os.geteuid() != 0:
        raise UsageError(f"building {what} needs root (debootstrap and chroot)")
    layout = spec.disk_layout
    if spec.size_gb * 2**30 // 512 < layout.min_sectors:
        raise UsageError(f"a {spec.size_gb} GB disk is too small for the {layout.name} layout")
    if not Path(release.distro.keyring).is_file():
        raise UsageError(
            f"building {what} needs {release.distro.keyring} on the host: install the package "
            "that ships it (ubuntu-keyring or debian-archive-keyring)"
        )
    if not (Path("/usr/share/debootstrap/scripts") / release.codename).exists():
        raise UsageError(
            f"the host's debootstrap does not know {release.codename}: install a newer debootstrap"
        )


def _archive(spec: BaseSpec) -> str:
    return (spec.mirror or spec.release.distro.archive).rstrip("/")


def _scratch_root() -> Path:
    # Not /tmp: it is often a nodev tmpfs, where the chroot's /dev/null would not open.
    return leftovers.run_dir()


def _timed(what: str, func: Callable[..., None], *args: Any) -> None:
    """One phase, as a stage of the live view (or a line when it starts and when it is done)."""
    if not progress.active():
        log.info("base: %s...", what)
    with progress.stage(f"base: {what}"):
        func(*args)


def _host_env() -> dict[str, str]:
    # The build's tools must not see the caller's locale or shell settings; proxies still apply.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}  # fmt: skip
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if var in os.environ:
            env[var] = os.environ[var]
    return env


def _isolated(argv: list[str]) -> list[str]:
    """argv in private mount and PID namespaces.

    Every mount made for the chroot dies with the namespace, so none can outlive a failed or
    interrupted build (a leftover /dev bind under the scratch dir would be emptied by rmtree), and
    killing `unshare` kills every process left inside.
    """
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--kill-child", "--", *argv]


def _bootstrap(spec: BaseSpec, root: Path) -> None:
    release = spec.release
    argv = [
        "debootstrap", "--variant=minbase",
        f"--components={','.join(release.distro.components)}",
        f"--keyring={release.distro.keyring}",
        release.codename, str(root), _archive(spec),
    ]  # fmt: skip
    # debootstrap reports its errors ("E: Failed getting release file ...") on stdout.
    to_stderr = ["sh", "-c", 'exec "$@" 1>&2', "sh", *argv]
    try:
        run(_isolated(to_stderr), env=_host_env(), timeout=HOST_TIMEOUT_S)
    except CommandError as exc:
        raise BuildError(STEP, f"debootstrap from {_archive(spec)} failed: {_tail(exc)}") from exc


def _install_packages(spec: BaseSpec, root: Path) -> None:
    # The guest's own sources (updates and security too) are the ones apt installs from here.
    (root / "etc/apt/sources.list").write_text(apt_sources(spec.release, _archive(spec)))
    mount_and_chroot = (
        'script="$1"; shift; mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
        'mount --bind /dev/pts "$0/dev/pts" && exec chroot "$0" /bin/sh -c "$script" install "$@"'
    )
    argv = ["sh", "-c", mount_and_chroot, str(root), INSTALL_SCRIPT]
    argv += [spec.release.kernel_package, *PACKAGES]
    try:
        run(_isolated(argv), env=_host_env(), timeout=HOST_TIMEOUT_S)
    except CommandError as exc:
        raise BuildError(STEP, f"installing packages failed: {_tail(exc)}") from exc


def _make_generic(root: Path) -> None:
    """Drop what ties the tree to this build host or build run, as a cloud image ships."""
    # systemd writes a fresh id on first boot into an empty file; D-Bus reads the same one.
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    # cloud-init generates host keys on first boot, so no two instances share them.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Stale indexes would only mislead; the guest runs apt-get update before installing.
    lists = root / "var/lib/apt/lists"
    _remove_tree(lists)
    (lists / "partial").mkdir(parents=True)
    # debootstrap copied the build host's; dhclient writes the guest's own at boot.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    for rel, data in _overlay_files():
        _install_file(root / rel, data)


def _overlay_files() -> list[tuple[str, bytes]]:
    return [(rel, resource(f"overlays/base/{rel}").read_bytes()) for rel in OVERLAY_FILES]


def _install_file(dest: Path, data: bytes) -> None:
    # Root-owned whoever checked out the repository: tar keeps owners as they are.
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    dest.write_bytes(data)
    os.chown(dest, 0, 0)
    dest.chmod(0o644)


def _pack(root: Path, tarball: Path) -> None:
    # Numeric owners: the appliance's user database is not the guest's.
    run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root, "-cf", tarball,
         "."])  # fmt: skip


def _create_disk(disk: Path, raw: Path, spec: BaseSpec) -> None:
    """The partition table, written by the host on a sparse raw file, then made the qcow2."""
    with open(raw, "wb") as f:
        f.truncate(spec.size_gb * 2**30)
    script = spec.disk_layout.sfdisk_script(str(raw))
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", raw], input=script)
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, disk])
    raw.unlink()


def _lay_down(disk: Path, tarball: Path, layout: Layout, accel: Accel) -> None:
    """Make the filesystems, unpack the tree on them, and make it boot, in one appliance launch."""
    try:
        with appliance([(disk, "qcow2")], accel=accel) as g:
            dev = g.list_devices()[0]
            for part, fs in layout.mounted():
                g.mkfs(fs.fstype, f"{dev}{part.number}", label=fs.label)
            for part, fs in layout.mounted():
                if fs.mountpoint != "/":
                    g.mkdir_p(fs.mountpoint)  # on the filesystem mounted just before it
                g.mount(f"{dev}{part.number}", fs.mountpoint)
            g.tar_in(str(tarball), "/", xattrs=True)
            g.write("/etc/fstab", layout.fstab())
            # g.sh runs in the guest's root with /dev, /proc and /sys bound in, as GRUB needs.
            grub = [GRUB_INSTALL[f].format(disk=dev) for f in layout.firmware]
            sh(g, STEP, " && ".join([*grub, "update-grub"]))
            g.umount_all()
    except RuntimeError as exc:  # libguestfs reports every failure this way
        cancel.check()
        raise BuildError(STEP, _tail(exc)) from exc


def _remove_tree(path: Path) -> None:
    """rmtree that first detaches anything mounted below `path`, so it never deletes through it."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        log.warning("detaching leftover mount %s", point)
        run(["umount", "--lazy", point])
    shutil.rmtree(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(exc: Exception) -> str:
    """The line that says what went wrong: apt's and debootstrap's last `E:` line, else the last."""
    text = exc.stderr if isinstance(exc, CommandError) else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E: ")]
    return (errors or lines or [str(exc)])[-1]
