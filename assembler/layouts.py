"""Disk shapes of cloud images, as data: which partition is where, what it holds, how it mounts.

The distros' own cloud images put the root in partition 1 but physically last (so it can grow
into a larger disk), a BIOS boot partition (GRUB's core image for BIOS) at 14 and an ESP at 15;
Ubuntu noble adds an ext4 /boot at 16. `assembler base` lays its bases out the same way, so
the build and the boot test meet the shapes they will meet in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    BIOS_BOOT = "bios-boot"
    ESP = "esp"
    BOOT = "boot"
    ROOT = "root"


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


# GPT partition type GUIDs (UEFI spec; systemd's discoverable partitions for XBOOTLDR).
GPT_TYPE: dict[Role, str] = {
    Role.BIOS_BOOT: "21686148-6449-6E6F-744E-656564454649",
    Role.ESP: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    Role.BOOT: "BC13C2FF-59E6-4262-A352-B275FD6F7172",
    Role.ROOT: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
}


@dataclass(frozen=True)
class Filesystem:
    fstype: str
    label: str
    mountpoint: str
    options: str
    passno: int


# As the distros' images name and mount them (fstab by label, so a copied disk keeps working).
FILESYSTEMS: dict[Role, Filesystem] = {
    Role.ROOT: Filesystem("ext4", "cloudimg-rootfs", "/", "discard,errors=remount-ro", 1),
    Role.BOOT: Filesystem("ext4", "BOOT", "/boot", "defaults", 2),
    Role.ESP: Filesystem("vfat", "UEFI", "/boot/efi", "umask=0077", 1),
}


@dataclass(frozen=True)
class Partition:
    number: int
    role: Role
    start: int  # in 512-byte sectors
    sectors: int | None  # None: to the end of the disk


@dataclass(frozen=True)
class Layout:
    name: str
    partitions: tuple[Partition, ...]
    description: str

    def by_role(self, role: Role) -> Partition | None:
        return next((p for p in self.partitions if p.role == role), None)

    @property
    def firmware(self) -> tuple[Firmware, ...]:
        """What a disk of this shape can boot with, once GRUB is installed for each."""
        found = []
        if self.by_role(Role.BIOS_BOOT):
            found.append(Firmware.BIOS)
        if self.by_role(Role.ESP):
            found.append(Firmware.UEFI)
        return tuple(found)

    @property
    def min_sectors(self) -> int:
        """The smallest disk: every fixed partition, 512 MiB of root, the backup GPT."""
        end = max(p.start + (p.sectors or 0) for p in self.partitions)
        return end + 512 * 2048 + 34

    def mounted(self) -> list[tuple[Partition, Filesystem]]:
        """The partitions holding filesystems, in the order they must be mounted."""
        with_fs = [(p, FILESYSTEMS[p.role]) for p in self.partitions if p.role in FILESYSTEMS]
        return sorted(with_fs, key=lambda pf: len(pf[1].mountpoint))

    def sfdisk_script(self, device: str) -> str:
        """The partition table for `sfdisk`, numbers as given (sfdisk keeps them)."""
        lines = ["label: gpt", "unit: sectors", "sector-size: 512"]
        for p in self.partitions:
            size = "" if p.sectors is None else f", size={p.sectors}"
            name = f', name="{FILESYSTEMS[Role.ROOT].label}"' if p.role == Role.ROOT else ""
            kind = GPT_TYPE[p.role]
            lines.append(f"{device}{p.number} : start={p.start}{size}, type={kind}{name}")
        return "\n".join(lines) + "\n"

    def fstab(self) -> str:
        rows = [
            f"LABEL={fs.label}\t{fs.mountpoint}\t{fs.fstype}\t{fs.options}\t0\t{fs.passno}"
            for _, fs in self.mounted()
        ]
        return "\n".join(rows) + "\n"


def _layout(name: str, description: str, *parts: tuple[int, Role, int, int | None]) -> Layout:
    return Layout(name, tuple(Partition(*p) for p in parts), description)


MIB = 2048  # sectors
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        # Debian's genericcloud images (bookworm, trixie): BIOS boot 3 MiB, ESP 124 MiB.
        _layout(
            "debian",
            "root p1 last, BIOS boot p14, ESP p15 (Debian's cloud images)",
            (14, Role.BIOS_BOOT, 1 * MIB, 3 * MIB),
            (15, Role.ESP, 4 * MIB, 124 * MIB),
            (1, Role.ROOT, 128 * MIB, None),
        ),
        # Ubuntu jammy's cloud images: BIOS boot 4 MiB, ESP 106 MiB.
        _layout(
            "jammy",
            "root p1 last, BIOS boot p14, ESP p15 (Ubuntu 22.04's cloud images)",
            (14, Role.BIOS_BOOT, 1 * MIB, 4 * MIB),
            (15, Role.ESP, 5 * MIB, 106 * MIB),
            (1, Role.ROOT, 111 * MIB, None),
        ),
        # Ubuntu noble's: jammy's, and an ext4 /boot of 913 MiB at 16 before the root.
        _layout(
            "noble",
            "root p1 last, BIOS boot p14, ESP p15, /boot p16 (Ubuntu 24.04's cloud images)",
            (14, Role.BIOS_BOOT, 1 * MIB, 4 * MIB),
            (15, Role.ESP, 5 * MIB, 106 * MIB),
            (16, Role.BOOT, 111 * MIB, 913 * MIB),
            (1, Role.ROOT, 1024 * MIB, None),
        ),
        # BIOS only, as our bases were before: for images that must not offer UEFI.
        _layout(
            "bios",
            "BIOS boot p1, root p2 last (BIOS only)",
            (1, Role.BIOS_BOOT, 1 * MIB, 1 * MIB),
            (2, Role.ROOT, 2 * MIB, None),
        ),
    )
}
