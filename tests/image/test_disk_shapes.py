"""Ubuntu noble's disk shape on a real disk: root p1 physically last, BIOS boot p14, ESP p15,
an ext4 /boot p16 of 913 MiB. Ubuntu's image site is unreachable here, so the shape is a Debian
bookworm base laid out like noble's (`assembler base --layout noble`).

`make test`: the build's disk steps on it (inspect, grow-root, mount, firmware) leave the other
partitions as they were and grow the root into the rest, and the boot test's root-grown rule
passes it (the whole-disk rule it replaced failed every real noble image). `make test-all`:
a whole production build on it, booted with BIOS and UEFI, every check passing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assembler.accel import Accel
from assembler.base import BaseSpec, cached_base
from assembler.boottest.checks import Expectations, _root_grown
from assembler.distros import RELEASES
from assembler.errors import UsageError
from assembler.guest import appliance
from assembler.layouts import LAYOUTS, Role
from assembler.run import run
from assembler.steps import disk
from tests.builds import Built, build, run_cli

NOBLE = LAYOUTS["noble"]
GIB = 2**30
SIZE = 6 * GIB


@pytest.fixture(scope="session")
def noble_shaped_base() -> Path:
    try:
        return cached_base(BaseSpec(RELEASES["bookworm"], layout="noble"), Accel.TCG)
    except UsageError as exc:
        pytest.fail(f"cannot build the noble-shaped base on this host: {exc}")


def _content(g: Any, device: str) -> dict[str, str]:
    """What a partition holds: its bytes for BIOS boot (GRUB's core image), else each file's
    sha256 (mounting changes a filesystem's own bookkeeping, never its files)."""
    if g.vfs_type(device) == "":
        return {"bytes": hashlib.sha256(g.pread_device(device, 2**20, 0)).hexdigest()}
    g.mount_ro(device, "/")
    try:
        return {p: g.checksum("sha256", f"/{p}") for p in g.find("/") if g.is_file(f"/{p}")}
    finally:
        g.umount("/")


@pytest.fixture(scope="module")
def grown(noble_shaped_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The build's own disk steps on an overlay of the noble-shaped base, grown to 6 GiB."""
    overlay = tmp_path_factory.mktemp("noble") / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", noble_shaped_base,
         overlay, str(SIZE)])  # fmt: skip
    with appliance([(overlay, "qcow2")], accel=Accel.TCG) as g:
        dev = g.list_devices()[0]
        fixed = [p.number for p in NOBLE.partitions if p.role != Role.ROOT]
        geometry = {p["part_num"]: p for p in g.part_list(dev)}
        before = {n: (geometry[n], _content(g, f"{dev}{n}")) for n in fixed}
        found = disk.inspect(g, None, None)  # type: ignore[arg-type]
        disk.grow_root(g, None, found["root"])  # type: ignore[arg-type]
        disk.mount(g, None, found["mounts"])  # type: ignore[arg-type]
        firmware = disk.firmware(g, None, found["root"], found["mounts"])  # type: ignore[arg-type]
        g.umount_all()
        after = {n: _content(g, f"{dev}{n}") for n in fixed}
        disk.mount(g, None, found["mounts"])  # type: ignore[arg-type]
        yield g, dev, found, (before, after), firmware


@pytest.mark.image
@pytest.mark.full  # the noble-shaped base is built first: ~6 min on a fresh machine
def test_inspection_finds_the_root_p1_and_mounts_boot_and_esp(grown: Any) -> None:
    _, dev, found, _, _ = grown
    assert found["root"] == f"{dev}1"
    assert found["mounts"] == {"/": f"{dev}1", "/boot": f"{dev}16", "/boot/efi": f"{dev}15"}


@pytest.mark.image
@pytest.mark.full  # the noble-shaped base is built first: ~6 min on a fresh machine
def test_grow_root_leaves_bios_boot_esp_and_boot_as_they_were(grown: Any) -> None:
    g, dev, _, (before, after), _ = grown
    parts = {p["part_num"]: p for p in g.part_list(dev)}
    for number, (old, content) in before.items():
        now = parts[number]
        assert (now["part_start"], now["part_size"]) == (old["part_start"], old["part_size"])
        assert content and after[number] == content, f"partition {number} changed"
    assert any("vmlinuz" in f for f in before[16][1])
    assert any(f.upper().endswith("BOOTX64.EFI") for f in before[15][1])


@pytest.mark.image
@pytest.mark.full  # the noble-shaped base is built first: ~6 min on a fresh machine
def test_the_root_grew_into_the_rest_and_root_grown_passes_it(grown: Any) -> None:
    g, dev, _, _, _ = grown
    parts = {p["part_num"]: p for p in g.part_list(dev)}
    root = parts[1]
    assert g.blockdev_getsize64(dev) - (root["part_end"] + 1) <= 2 * 2**20
    st = g.statvfs("/")
    facts = {
        "root": {
            "fs_bytes": st["blocks"] * st["frsize"],
            "part_bytes": root["part_size"],
            "partitions_bytes": sum(p["part_size"] for p in parts.values()),
            "disk_bytes": g.blockdev_getsize64(dev),
        }
    }
    ok, detail = _root_grown(facts, Expectations("OpenStack", "ubuntu", "h", "k", ()))
    assert ok, detail
    assert "other partitions 1.0" in detail  # /boot, the ESP and BIOS boot: ~1.0 GiB
    # The old rule (filesystem within 5% of the whole disk) fails this good disk.
    assert facts["root"]["fs_bytes"] < 0.95 * facts["root"]["disk_bytes"]


@pytest.mark.image
@pytest.mark.full  # the noble-shaped base is built first: ~6 min on a fresh machine
def test_firmware_is_bios_and_uefi_and_the_kernel_is_on_boot(grown: Any) -> None:
    g, _, _, _, firmware = grown
    assert firmware == {"firmware": ("bios", "uefi")}
    assert g.glob_expand("/boot/vmlinuz-*")
    assert g.is_file("/boot/grub/grub.cfg")
    assert g.is_file(g.case_sensitive_path("/boot/efi/EFI/BOOT/BOOTX64.EFI"))


# --- test-all: a whole build on noble's shape, booted both ways ---


@pytest.fixture(scope="module")
def noble_shaped_production(noble_shaped_base: Path, images_dir: Path) -> Built:
    return build(noble_shaped_base, images_dir / "noble-shaped.qcow2", "--no-dev-mode")


@pytest.mark.image
@pytest.mark.boot
@pytest.mark.full
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_build_on_nobles_shape_boots_and_passes_every_check(
    noble_shaped_production: Built, firmware: str, tmp_path: Path
) -> None:
    assert noble_shaped_production.manifest["firmware"] == ["bios", "uefi"]
    report = tmp_path / "report.json"
    proc = run_cli(
        "boot-test", str(noble_shaped_production.image), "--accel", "tcg",
        "--firmware", firmware, "--report", str(report), timeout=2400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "root-grown" in proc.stdout and "PASSED" in proc.stdout
