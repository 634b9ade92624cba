"""The disk layouts: their data, and the tables real sfdisk writes from them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from assembler.layouts import GPT_TYPE, LAYOUTS, Role
from assembler.run import run

GIB = 2**30


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_sfdisk_writes_the_layout_with_its_partition_numbers(name: str, tmp_path: Path) -> None:
    layout = LAYOUTS[name]
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(3 * GIB)
    script = layout.sfdisk_script(str(disk))
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk], input=script)
    table = json.loads(run(["sfdisk", "--json", disk]))["partitiontable"]
    assert table["label"] == "gpt"
    got = {int(p["node"].removeprefix(str(disk))): p for p in table["partitions"]}
    assert sorted(got) == sorted(p.number for p in layout.partitions)
    for want in layout.partitions:
        part = got[want.number]
        assert part["start"] == want.start
        assert part["type"].upper() == GPT_TYPE[want.role]
        if want.sectors is not None:
            assert part["size"] == want.sectors
    # The root is physically last, so it can grow, and ends within 1 MiB (alignment) of the
    # last usable sector.
    last = max(got.values(), key=lambda p: p["start"])
    root = layout.by_role(Role.ROOT)
    assert root is not None and last is got[root.number]
    assert 0 <= table["lastlba"] - (last["start"] + last["size"] - 1) < 2048
    assert last.get("name") == "cloudimg-rootfs"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_partitions_are_aligned_and_apart(name: str) -> None:
    parts = sorted(LAYOUTS[name].partitions, key=lambda p: p.start)
    for before, after in itertools.pairwise(parts):
        assert before.sectors is not None
        assert before.start + before.sectors <= after.start
    assert all(p.start % 2048 == 0 for p in parts)


def test_the_distros_shapes() -> None:
    """Ubuntu's and Debian's images as published: root p1 last, 14 BIOS boot, 15 ESP, noble 16."""
    for name in ("debian", "jammy", "noble"):
        layout = LAYOUTS[name]
        roles = {p.number: p.role for p in layout.partitions}
        assert roles[1] == Role.ROOT and roles[14] == Role.BIOS_BOOT and roles[15] == Role.ESP
        assert layout.firmware == ("bios", "uefi")
    noble_boot = LAYOUTS["noble"].by_role(Role.BOOT)
    assert noble_boot is not None and noble_boot.number == 16
    assert noble_boot.sectors is not None and 0.85 * GIB < noble_boot.sectors * 512 < GIB
    assert LAYOUTS["bios"].firmware == ("bios",)


def test_fstab_mounts_parents_first_by_label() -> None:
    rows = [line.split("\t") for line in LAYOUTS["noble"].fstab().splitlines()]
    assert [r[:3] for r in rows] == [
        ["LABEL=cloudimg-rootfs", "/", "ext4"],
        ["LABEL=BOOT", "/boot", "ext4"],
        ["LABEL=UEFI", "/boot/efi", "vfat"],
    ]
    assert [r[5] for r in rows] == ["1", "2", "1"]


def test_min_sectors_leaves_room_for_a_root() -> None:
    noble = LAYOUTS["noble"]
    assert noble.min_sectors * 512 > 1536 * 2**20  # 1 GiB before the root, 512 MiB of root
