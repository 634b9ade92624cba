"""The disk: grow the root partition and filesystem to the overlay's size, mount, read which
firmware boots it, trim."""

from __future__ import annotations

import logging
from typing import Any

from assembler import firmware as firmware_mod
from assembler.config import BuildConfig
from assembler.errors import BuildError

log = logging.getLogger(__name__)

# Sectors GPT keeps at the end of the disk for its backup header and table.
GPT_BACKUP_SECTORS = 34
ALIGN_SECTORS = 2048  # 1 MiB, as every partitioning tool aligns today
GROWABLE = {"ext2", "ext3", "ext4"}


def find_root(g: Any) -> str:
    # Inspection takes seconds under emulation: once per appliance.
    roots = g.inspect_get_roots() or g.inspect_os()
    if len(roots) != 1:
        raise BuildError(
            "inspect", f"expected one operating system in the base, found {len(roots)}"
        )
    return str(roots[0])


def inspect(g: Any, cfg: BuildConfig, base_facts: Any) -> dict[str, Any]:
    """The root device and mountpoints: from the base's cached facts, or by inspection."""
    if base_facts is not None:
        return {"root": base_facts.root, "mounts": dict(base_facts.mounts)}
    root = find_root(g)
    return {"root": root, "mounts": dict(g.inspect_get_mountpoints(root))}


def grow_root(g: Any, cfg: BuildConfig, root: str) -> None:
    """Move the GPT backup to the new end of the disk and grow the last (root) partition."""
    try:
        disk, partnum = g.part_to_dev(root), g.part_to_partnum(root)
    except RuntimeError as exc:
        raise BuildError("grow-root", f"root {root} is not a partition") from exc
    fstype = g.vfs_type(root)
    if fstype not in GROWABLE:
        raise BuildError("grow-root", f"cannot grow a {fstype} root filesystem")
    parts = sorted(g.part_list(disk), key=lambda p: p["part_start"])
    if parts[-1]["part_num"] != partnum:
        raise BuildError("grow-root", f"root partition {root} is not the last on {disk}")
    if g.part_get_parttype(disk) == "gpt":
        g.part_expand_gpt(disk)
        tail = GPT_BACKUP_SECTORS
    else:
        tail = 0
    sectors = g.blockdev_getsz(disk)
    end = (sectors - tail) // ALIGN_SECTORS * ALIGN_SECTORS - 1
    current_end = parts[-1]["part_end"] // 512
    if end <= current_end:
        log.info("root partition already fills the disk")
        return
    g.part_resize(disk, partnum, end)
    g.e2fsck_f(root)
    g.resize2fs(root)


def mount(g: Any, cfg: BuildConfig, mounts: dict[str, str]) -> None:
    for mountpoint in sorted(mounts, key=len):
        g.mount(mounts[mountpoint], mountpoint)


def firmware(g: Any, cfg: BuildConfig, root: str, mounts: dict[str, str]) -> dict[str, Any]:
    """BIOS, UEFI or both, for the manifest (and Glance's hw_firmware_type); none is an error:
    the image could not boot."""
    found = firmware_mod.detect(g, g.part_to_dev(root), mounts)
    if not found:
        raise BuildError(
            "firmware", "the base boots with neither BIOS (no MBR boot code) nor UEFI "
            f"(no {firmware_mod.LOADER} on a mounted EFI system partition)"
        )  # fmt: skip
    log.info("the image boots with %s", " and ".join(found))
    return {"firmware": tuple(str(f) for f in found)}


def trim(g: Any, cfg: BuildConfig) -> None:
    """Discard free blocks so they become holes in the overlay and vanish from the output."""
    g.sync()
    g.fstrim("/")
