"""The base image: key and failure handling (fast), its shape (guestfs), its boot (QEMU)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assembler import base, firmware
from assembler.accel import Accel
from assembler.base import PACKAGES, BaseSpec, base_key
from assembler.boottest.vm import OVMF_VARS, ovmf_drives
from assembler.distros import RELEASES, apt_sources
from assembler.errors import BuildError, CommandError, UsageError
from assembler.guest import appliance
from assembler.layouts import FILESYSTEMS, GPT_TYPE, LAYOUTS, Role
from assembler.run import run

BOOKWORM = RELEASES["bookworm"]
MIB = 1024 * 1024
LAYOUT = LAYOUTS[BOOKWORM.layout]
ROOT_PART = LAYOUT.partitions[-1].number
ESP_PART = next(p.number for p in LAYOUT.partitions if p.role == Role.ESP)


# --- cache key, host checks, atomic output: no image needed ---


def test_key_is_a_stable_hex_digest() -> None:
    key = base_key(BaseSpec(BOOKWORM))
    assert key == base_key(BaseSpec(BOOKWORM))
    assert len(key) == 64
    int(key, 16)


def test_naming_the_default_archive_is_the_same_base() -> None:
    explicit = BaseSpec(BOOKWORM, mirror=BOOKWORM.distro.archive + "/")
    assert base_key(explicit) == base_key(BaseSpec(BOOKWORM))


def test_key_changes_with_each_input(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {
        base_key(BaseSpec(BOOKWORM)),
        base_key(BaseSpec(BOOKWORM, mirror="http://mirror.example/debian")),
        base_key(BaseSpec(BOOKWORM, size_gb=5)),
        base_key(BaseSpec(RELEASES["jammy"])),
        base_key(BaseSpec(BOOKWORM, layout="noble")),
    }
    assert base_key(BaseSpec(BOOKWORM, layout=BOOKWORM.layout)) == base_key(BaseSpec(BOOKWORM))
    monkeypatch.setattr(base, "RECIPE_VERSION", base.RECIPE_VERSION + 1)
    keys.add(base_key(BaseSpec(BOOKWORM)))
    monkeypatch.setattr(base, "PACKAGES", (*PACKAGES, "vim-tiny"))
    keys.add(base_key(BaseSpec(BOOKWORM)))
    assert len(keys) == 7


def test_a_disk_too_small_for_its_layout_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base.os, "geteuid", lambda: 0)
    with pytest.raises(UsageError, match="too small for the noble layout"):
        base.check_host(BaseSpec(BOOKWORM, size_gb=1, layout="noble"))


def test_missing_keyring_is_a_usage_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base.os, "geteuid", lambda: 0)
    distro = dataclasses.replace(BOOKWORM.distro, keyring="/nonexistent/archive-keyring.gpg")
    spec = BaseSpec(dataclasses.replace(BOOKWORM, distro=distro))
    with pytest.raises(UsageError, match="/nonexistent/archive-keyring"):
        base.check_host(spec)


def test_release_unknown_to_debootstrap_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base.os, "geteuid", lambda: 0)
    spec = BaseSpec(dataclasses.replace(BOOKWORM, codename="nosuchrelease"))
    with pytest.raises(UsageError, match="nosuchrelease"):
        base.check_host(spec)


def scratch_left(cache: Path) -> list[Path]:
    """What is left in the run directories (this process's stays, empty, until it exits)."""
    runs = cache / "trove-image-assembler" / "run"
    return [p for run in runs.iterdir() for p in run.iterdir()] if runs.exists() else []


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), BuildError("base", "boom")])
def test_failed_build_leaves_nothing_behind(
    failure: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fake the slow phases; the disk and scratch handling are the real ones."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(base, "check_host", lambda spec: None)
    monkeypatch.setattr(base, "_bootstrap", lambda spec, root: (root / "etc").mkdir(parents=True))
    monkeypatch.setattr(base, "_install_packages", lambda spec, root: None)
    monkeypatch.setattr(base, "_make_generic", lambda root: None)

    def lay_down(disk: Path, tarball: Path, layout: Any, accel: Accel) -> None:
        assert disk.exists() and tarball.exists()
        raise failure

    monkeypatch.setattr(base, "_lay_down", lay_down)
    out_dir = tmp_path / "out"
    with pytest.raises(type(failure)):
        base.build_base(BaseSpec(BOOKWORM), out_dir / "base.qcow2", Accel.TCG)
    assert list(out_dir.iterdir()) == []
    assert scratch_left(tmp_path / "cache") == []


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    builds: list[Path] = []

    def fake_build(spec: BaseSpec, output: Path, accel: Accel) -> None:
        builds.append(output)
        time.sleep(0.3)  # long enough for the other caller to reach the lock
        output.write_text("qcow2")

    monkeypatch.setattr(base, "build_base", fake_build)
    results: list[Path] = []

    def caller() -> None:
        results.append(base.cached_base(BaseSpec(BOOKWORM), Accel.TCG))

    callers = [threading.Thread(target=caller) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(builds) == 1
    assert results == [builds[0], builds[0]]
    assert builds[0].name == f"{base_key(BaseSpec(BOOKWORM))}.qcow2"


def test_bad_mirror_is_a_one_line_build_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """debootstrap really runs (as root) against a port where nothing listens."""
    try:
        base.check_host(BaseSpec(BOOKWORM))
    except UsageError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out" / "base.qcow2"
    mirror = "http://127.0.0.1:9/debian"
    with pytest.raises(BuildError, match=re.escape(f"debootstrap from {mirror} failed")) as exc:
        base.build_base(BaseSpec(BOOKWORM, mirror=mirror), out, Accel.TCG)
    assert "\n" not in str(exc.value)
    assert list(out.parent.iterdir()) == []
    assert scratch_left(tmp_path / "cache") == []


# --- the built base, inspected read-only ---


@pytest.fixture(scope="module")
def g(debian_base: Path) -> Iterator[Any]:
    with appliance([(debian_base, "qcow2")], accel=Accel.TCG, readonly=True) as handle:
        handle.mount_ro(f"{_disk(handle)}{ROOT_PART}", "/")
        handle.mount_ro(f"{_disk(handle)}{ESP_PART}", "/boot/efi")
        yield handle


def _disk(g: Any) -> str:
    return str(g.list_devices()[0])


def _dpkg_installed(g: Any) -> set[str]:
    installed = set()
    for stanza in g.cat("/var/lib/dpkg/status").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if fields.get("Status") == "install ok installed":
            installed.add(fields["Package"])
    return installed


@pytest.mark.image
def test_disk_is_laid_out_as_debians_cloud_images(g: Any) -> None:
    """p14 BIOS boot, p15 ESP, p1 root physically last, at the sectors the layout gives."""
    dev = _disk(g)
    assert g.part_get_parttype(dev) == "gpt"
    parts = {p["part_num"]: p for p in g.part_list(dev)}
    assert sorted(parts) == sorted(p.number for p in LAYOUT.partitions) == [1, 14, 15]
    for want in LAYOUT.partitions:
        got = parts[want.number]
        assert g.part_get_gpt_type(dev, want.number).upper() == GPT_TYPE[want.role]
        assert got["part_start"] == want.start * 512
        if want.sectors is not None:
            assert got["part_size"] == want.sectors * 512
    last = max(parts.values(), key=lambda p: p["part_start"])
    assert last["part_num"] == ROOT_PART == 1
    # It ends where the backup GPT and the 1 MiB alignment leave room.
    assert g.blockdev_getsize64(dev) - last["part_end"] <= 2 * MIB


@pytest.mark.image
def test_bios_boot_partition_and_mbr_hold_grub(g: Any) -> None:
    dev = _disk(g)
    bios = next(p.number for p in LAYOUT.partitions if p.role == Role.BIOS_BOOT)
    # grub-install embedded core.img there and its boot code in the MBR.
    assert g.pread_device(f"{dev}{bios}", 512, 0) != bytes(512)
    assert b"GRUB" in g.pread_device(dev, 440, 0)


@pytest.mark.image
def test_esp_holds_grubs_removable_media_loader(g: Any) -> None:
    esp = f"{_disk(g)}{ESP_PART}"
    assert g.vfs_type(esp) == "vfat"
    assert g.vfs_label(esp) == FILESYSTEMS[Role.ESP].label == "UEFI"
    loader = g.case_sensitive_path("/boot/efi/EFI/BOOT/BOOTX64.EFI")
    assert g.is_file(loader)
    assert g.pread(loader, 2, 0) == b"MZ"  # a PE image
    assert g.is_file("/boot/grub/x86_64-efi/normal.mod")


@pytest.mark.image
def test_firmware_read_from_the_disk_is_bios_and_uefi(g: Any) -> None:
    dev = _disk(g)
    mounts = {"/": f"{dev}{ROOT_PART}", "/boot/efi": f"{dev}{ESP_PART}"}
    assert firmware.detect(g, dev, mounts) == ("bios", "uefi")
    assert firmware.detect(g, dev, {"/": f"{dev}{ROOT_PART}"}) == ("bios",)


@pytest.mark.image
def test_root_is_ext4_labelled(g: Any) -> None:
    root = f"{_disk(g)}{ROOT_PART}"
    assert g.vfs_type(root) == "ext4"
    assert g.vfs_label(root) == FILESYSTEMS[Role.ROOT].label == "cloudimg-rootfs"


@pytest.mark.image
def test_fstab_mounts_root_and_esp_by_label(g: Any) -> None:
    entries = [line.split() for line in g.cat("/etc/fstab").splitlines() if line.strip()]
    assert [e[:3] for e in entries] == [
        ["LABEL=cloudimg-rootfs", "/", "ext4"],
        ["LABEL=UEFI", "/boot/efi", "vfat"],
    ]


@pytest.mark.image
def test_kernel_initrd_and_grub_on_the_serial_console(g: Any) -> None:
    assert g.glob_expand("/boot/vmlinuz-*")
    assert g.glob_expand("/boot/initrd.img-*")
    assert g.is_file("/boot/grub/i386-pc/core.img")
    cfg = g.cat("/boot/grub/grub.cfg")
    assert "terminal_output serial console" in cfg
    uuid = g.vfs_uuid(f"{_disk(g)}{ROOT_PART}")
    linux = [line.split() for line in cfg.splitlines() if line.strip().startswith("linux\t")]
    assert linux
    for words in linux:
        assert f"root=UUID={uuid}" in words
        assert words.index("console=tty0") < words.index("console=ttyS0,115200")


@pytest.mark.image
@pytest.mark.parametrize("package", [BOOKWORM.kernel_package, *PACKAGES])
def test_package_installed(g: Any, package: str) -> None:
    assert package in _dpkg_installed(g)


@pytest.mark.image
def test_no_recommends_pulled_in(g: Any) -> None:
    # Recommends of openssh-server, cloud-init and the kernel.
    assert not {"xauth", "ncurses-term", "eatmydata", "apparmor"} & _dpkg_installed(g)


@pytest.mark.image
@pytest.mark.parametrize(
    "path",
    ["/usr/bin/cloud-init", "/usr/sbin/sshd", "/usr/bin/sudo", "/usr/bin/python3",
     "/usr/bin/growpart", "/sbin/dhclient", "/sbin/ifup", "/lib/systemd/systemd"],
)  # fmt: skip
def test_command_present(g: Any, path: str) -> None:
    assert g.is_file(path, followsymlinks=True)


@pytest.mark.image
def test_no_machine_identity(g: Any) -> None:
    assert g.filesize("/etc/machine-id") == 0
    assert g.readlink("/var/lib/dbus/machine-id") == "/etc/machine-id"
    assert g.glob_expand("/etc/ssh/ssh_host_*") == []
    assert g.cat("/etc/hostname") == "localhost\n"
    assert not g.exists("/etc/resolv.conf")  # the build host's


@pytest.mark.image
def test_no_apt_indexes_or_packages_left(g: Any) -> None:
    assert g.ls("/var/lib/apt/lists") == ["partial"]
    assert g.glob_expand("/var/cache/apt/archives/*.deb") == []
    assert g.glob_expand("/var/cache/apt/*.bin") == []


@pytest.mark.image
def test_guest_apt_sources_are_the_release_ones(g: Any) -> None:
    assert g.cat("/etc/apt/sources.list") == apt_sources(BOOKWORM)


@pytest.mark.image
def test_build_chroot_leftovers_are_gone(g: Any) -> None:
    assert not g.exists("/usr/sbin/policy-rc.d")


@pytest.mark.image
def test_file_owners_are_the_guests_numeric_ids(g: Any) -> None:
    groups = dict(line.split(":")[0:3:2] for line in g.cat("/etc/group").splitlines())
    helper = g.statns("/usr/lib/dbus-1.0/dbus-daemon-launch-helper")
    assert helper["st_gid"] == int(groups["messagebus"])


@pytest.mark.image
def test_locale_needs_no_generation(g: Any) -> None:
    assert "LANG=C.UTF-8" in g.cat("/etc/default/locale").splitlines()


# --- the base boots and cloud-init finishes ---

USER_DATA = """#cloud-config
runcmd:
  - >-
    echo "BASE-OK ssh=$(systemctl is-active ssh) host=$(hostname)
    id=$(wc -c < /etc/machine-id)" > /dev/ttyS0
power_state:
  mode: poweroff
  condition: true
"""


@pytest.mark.boot
@pytest.mark.full  # every image test boots the base's descendants; this boots the base itself
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_base_boots_to_cloud_init_final(debian_base: Path, tmp_path: Path, firmware: str) -> None:
    """NoCloud seed, QEMU user networking with restrict=on; the guest powers itself off."""
    (tmp_path / "meta-data").write_text("instance-id: base-boot-test\nlocal-hostname: basetest\n")
    (tmp_path / "user-data").write_text(USER_DATA)
    seed, disk, console = tmp_path / "seed.iso", tmp_path / "disk.qcow2", tmp_path / "console.log"
    run(["genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock",
         tmp_path / "user-data", tmp_path / "meta-data"])  # fmt: skip
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", debian_base, "-F", "qcow2", disk])
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic",
        "-monitor", "none", "-serial", f"file:{console}", "-no-reboot",
        "-drive", f"file={disk},if=virtio,format=qcow2",
        "-drive", f"file={seed},media=cdrom,format=raw,readonly=on",
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    if firmware == "uefi":
        shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
        qemu += ovmf_drives(tmp_path / "vars.fd")
    try:
        run(qemu, timeout=240)
    except CommandError as exc:  # no power-off in time: show where the boot stopped
        pytest.fail(f"{exc}\n{console.read_text(errors='replace')[-3000:]}")
    log = console.read_text(errors="replace")
    tail = log[-3000:]
    assert "BASE-OK ssh=active host=basetest id=33" in log, tail
    assert " finished at " in log and "Datasource DataSourceNoCloud" in log, tail
    assert "FAILED" not in log, tail
