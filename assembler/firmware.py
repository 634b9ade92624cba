"""Which firmware a disk boots with, read from the disk itself (not from how it was made).

BIOS: boot code in the MBR (GRUB's boot.img; a UEFI-only disk's protective MBR has none).
UEFI: an EFI system partition holding the removable-media loader, EFI/BOOT/BOOTX64.EFI: a
cloud's fresh NVRAM has no boot entries, so that default path is what OVMF starts.
"""

from __future__ import annotations

from typing import Any

from assembler.layouts import GPT_TYPE, Firmware, Role

MBR_BOOT_CODE = 440  # bytes before the disk signature and partition table
MBR_ESP_ID = 0xEF
LOADER = "/EFI/BOOT/BOOTX64.EFI"


def detect(g: Any, disk: str, mounts: dict[str, str]) -> tuple[Firmware, ...]:
    """`disk` is the appliance's device; `mounts` maps mountpoints to devices, as mounted."""
    found = []
    if any(g.pread_device(disk, MBR_BOOT_CODE, 0)):
        found.append(Firmware.BIOS)
    esp = next((d for d in esp_devices(g, disk) if d in mounts.values()), None)
    if esp is not None:
        at = next(mp for mp, d in mounts.items() if d == esp).rstrip("/")
        try:
            loader = g.case_sensitive_path(at + LOADER)  # vfat: any case names it
        except RuntimeError:
            loader = None
        if loader and g.is_file(loader):
            found.append(Firmware.UEFI)
    return tuple(found)


def esp_devices(g: Any, disk: str) -> list[str]:
    kind = g.part_get_parttype(disk)
    devices = []
    for p in g.part_list(disk):
        num = p["part_num"]
        if kind == "gpt":
            is_esp = g.part_get_gpt_type(disk, num).upper() == GPT_TYPE[Role.ESP]
        else:
            is_esp = g.part_get_mbr_id(disk, num) == MBR_ESP_ID
        if is_esp:
            devices.append(f"{disk}{num}")
    return devices
