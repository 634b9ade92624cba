"""Boots for the whole session: negative images planted in one appliance launch, and a pool
that runs every boot the selected tests need, as soon as the first of them asks.

Boots run as `assembler boot-test` processes, as an operator runs them, each writing its JSON
report. ASSEMBLER_BOOT_PARALLEL (default 2) boots at once, with one vCPU each when more than
one: on two host cores that finished the same boots sooner than one after the other with two
vCPUs (see the README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.boot.faults import COMBINED, FAULTS
from tests.builds import Built

FORMAT_OF = {
    "raw_production": "raw",
    "vmdk_dev": "vmdk",
    "qcow2_embedded": "qcow2",
    "qcow2_first_boot": "qcow2",
    "trixie_production": "qcow2",
    "trixie_dev": "raw",
}


@dataclass(frozen=True)
class Boot:
    """One boot the tests judge: an image (a built one, or a negative overlay) and options."""

    source: str  # fixture of the built image
    faults: tuple[str, ...] = ()
    config_drive: bool = False
    args: tuple[str, ...] = ()  # more boot-test options


def negative_boot(name: str) -> Boot:
    faults = COMBINED.get(name, (name,))
    sources = {FAULTS[f].source for f in faults}
    assert len(sources) == 1, f"{name}: faults planted in different images"
    args = tuple(a for f in faults for a in FAULTS[f].args)
    return Boot(sources.pop(), faults, args=args)


POSITIVE = {
    "production": Boot("raw_production"),
    # Booted with UEFI (OVMF), as a cloud with hw_firmware_type=uefi would: `make test` boots
    # built images both ways (the production one with BIOS).
    "dev-config-drive": Boot("vmdk_dev", config_drive=True, args=("--firmware", "uefi")),
    # Trove's whole create: prepare, the conductor hearing `healthy`, a client's round trip.
    "postgresql-from-registry": Boot("raw_production", args=("--datastore", "postgresql:15")),
    "mariadb-embedded": Boot(
        "qcow2_embedded", args=("--datastore", "mariadb:10.11", "--no-registry")
    ),
    "mariadb-from-registry": Boot("raw_production", args=("--datastore", "mariadb:10.11")),
    "postgresql-first-boot": Boot(
        "qcow2_first_boot", args=("--datastore", "postgresql:15", "--no-registry")
    ),
    # Debian 13: the agent over the bus from a production image (BIOS), and a dev image that
    # fetches trove's source from the controller (UEFI, through a config drive).
    "trixie-production": Boot("trixie_production"),
    "trixie-dev": Boot("trixie_dev", config_drive=True, args=("--firmware", "uefi")),
}


def boot_of(name: str) -> Boot:
    return POSITIVE[name] if name in POSITIVE else negative_boot(name)


@dataclass
class Result:
    report: dict[str, Any]
    returncode: int
    output: str
    artifacts: Path
    seconds: float


class BootPool:
    def __init__(self, request: pytest.FixtureRequest, work: Path) -> None:
        self.request = request
        self.work = work
        self.parallel = max(1, int(os.environ.get("ASSEMBLER_BOOT_PARALLEL", "2")))
        self.cpus = 2 if self.parallel == 1 else 1
        self.executor = ThreadPoolExecutor(self.parallel, thread_name_prefix="boot")
        self.futures: dict[str, Future[Result]] = {}
        self.images: dict[str, Path] = {}

    def wanted(self) -> list[str]:
        """Every boot the session's selected tests ask for, in the order they run."""
        names: list[str] = []
        for item in self.request.session.items:
            callspec = getattr(item, "callspec", None)
            name = callspec.params.get("boot") if callspec else None
            if isinstance(name, str) and name not in names:
                names.append(name)
        return names

    def start(self) -> None:
        self._prepare(self.wanted())

    def result(self, name: str) -> Result:
        if name not in self.futures:  # asked for outside the selection seen at start
            self._prepare([name])
        return self.futures[name].result()

    def _prepare(self, names: list[str]) -> None:
        """Images for names, then their boots queued; fixtures are only resolved here, in the
        test's own thread, never in the pool's."""
        self._plant([n for n in names if boot_of(n).faults])
        for name in names:
            self.images.setdefault(name, self._built(boot_of(name).source).image)
            if name not in self.futures:
                self.futures[name] = self.executor.submit(self._boot, name)

    def _built(self, source: str) -> Built:
        built: Built = self.request.getfixturevalue(source)
        return built

    def _plant(self, names: list[str]) -> None:
        """Negative overlays for names, all edited in one appliance launch."""
        names = [n for n in names if n not in self.images]
        if not names:
            return
        import guestfs

        overlays = {}
        for name in names:
            boot = boot_of(name)
            built = self._built(boot.source)
            overlay = self.work / f"{name}.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", FORMAT_OF[boot.source],
                 "-b", built.image, overlay],
                check=True,
            )  # fmt: skip
            # The harness reads what an image declares (agent, keys, user) from its manifest.
            manifest = built.image.with_name(built.image.name + ".manifest.json")
            shutil.copy(manifest, overlay.with_name(overlay.name + ".manifest.json"))
            overlays[name] = overlay
        g = guestfs.GuestFS(python_return_dict=True)
        g.set_backend("direct")
        g.set_backend_settings(["force_tcg"])
        for overlay in overlays.values():
            g.add_drive_opts(str(overlay), format="qcow2")
        g.launch()
        try:
            roots = g.inspect_os()
            # One root per drive, and drives are named in the order they were added.
            for index, name in enumerate(overlays):
                device = f"/dev/sd{_drive_letters(index)}"
                root = next(r for r in roots if r.startswith(device) and r[len(device)].isdigit())
                g.mount(root, "/")
                for fault in boot_of(name).faults:
                    FAULTS[fault].edit(g)
                g.umount_all()
            g.shutdown()
        finally:
            g.close()
        self.images.update(overlays)

    def _boot(self, name: str) -> Result:
        import time

        boot = boot_of(name)
        image = self.images[name]
        out = self.work / name
        out.mkdir(exist_ok=True)
        report = out / "report.json"
        argv = [sys.executable, "-m", "assembler", "boot-test", str(image), "--accel", "tcg",
                "--cpus", str(self.cpus), "--report", str(report),
                "--junit", str(out / "junit.xml"), "--artifacts", str(out / "artifacts")]  # fmt: skip
        if boot.config_drive:
            argv.append("--config-drive")
        argv += boot.args
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=2400, check=False)
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr[-3000:]
        doc = json.loads(report.read_text()) if report.exists() else {}
        # Where the time of the suite goes, in the pytest log of every run.
        sys.stderr.write(f"\nboot {name}: {seconds:.0f} s, {doc.get('phases')}\n")
        return Result(doc, proc.returncode, output, out / "artifacts", seconds)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _drive_letters(index: int) -> str:
    """sda..sdz, sdaa..: the names libguestfs gives drives in the order they were added."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


@pytest.fixture(scope="session")
def boots(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BootPool]:
    pool = BootPool(request, tmp_path_factory.mktemp("boots"))
    pool.start()
    yield pool
    pool.close()
