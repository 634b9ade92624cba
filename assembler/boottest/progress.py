"""Is a booting guest still getting somewhere? Decided from what it shows, not from the clock.

Machines differ up to three times in emulation speed, so fixed windows per phase either fail a
good image on a slow machine or hold a broken one for minutes on a fast one. Instead the
harness waits while the guest makes progress (console output, the fact gatherer's heartbeat on
its port, requests to the metadata service, QMP events), gives up after a long stall or a
generous overall ceiling, and stops at once when the console shows that no facts can come.

Pure: the VM loop feeds it snapshots; it keeps the phases (seconds since QEMU started) that the
report shows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Console text after which the guest can never send its facts, and what it means.
FATAL_CONSOLE: tuple[tuple[str, str], ...] = (
    ("Kernel panic - not syncing", "the kernel panicked"),
    ("you need to load the kernel first", "grub found no kernel to boot"),
    ("grub rescue>", "grub fell into its rescue shell"),
    ("No bootable device", "the firmware found no bootable disk"),
    ("Boot failed: not a bootable disk", "the firmware found no bootable disk"),
    # OVMF (UEFI), once every boot option (the disk's loader, then the network) has failed.
    ("No bootable option or device was found", "the UEFI firmware found nothing to boot"),
    # OVMF's shell starts only once no boot option (disk or network) has worked.
    ("Shell> ", "the UEFI firmware found nothing to boot (its shell started)"),
)
# cloud-init's last console line: `Cloud-init v. 22.4.2 finished at ... Datasource X.  Up N s`
CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .*Datasource (\S+?)\.?\s")
LOGIN_PROMPT = " login:"
KERNEL_BANNER = "Linux version"
# The gatherer arrives in the user data and starts right after cloud-init's final stage.
GATHERER_GRACE = 120.0


@dataclass(frozen=True)
class Limits:
    ceiling: float  # from QEMU's start to the facts, whatever happens
    stall: float  # this long without any sign of progress: nothing more will come


@dataclass
class Snapshot:
    now: float  # seconds since QEMU started
    console: str
    facts_port: str
    activity: int = 0  # a count that grows with outside signs of life (metadata requests, events)


@dataclass
class Watch:
    """Feed it snapshots until `verdict` is set: "facts" or the reason to stop waiting."""

    limits: Limits
    phases: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] | None = None
    verdict: str | None = None
    certain: bool = False  # the failure was seen, not presumed from silence
    last_progress: float = 0.0
    _sizes: tuple[int, int, int] = (0, 0, 0)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, snap: Snapshot) -> str | None:
        sizes = (len(snap.console), len(snap.facts_port), snap.activity)
        if sizes != self._sizes:
            self._sizes = sizes
            self.last_progress = snap.now
        self._phases(snap)
        self.heartbeats, self.facts = parse_port(snap.facts_port)
        if self.heartbeats:
            self._mark("gatherer", snap.now)
        if self.facts is not None:
            self._mark("facts", snap.now)
            self.verdict = "facts"
            return self.verdict
        reason = fatal_reason(snap.console, self.phases, snap.now, bool(self.heartbeats))
        if reason is not None:
            self.verdict, self.certain = reason, True
        elif snap.now > self.limits.ceiling:
            self.verdict = f"no facts from the guest within {self.limits.ceiling:.0f} s"
        elif snap.now - self.last_progress > self.limits.stall:
            self.verdict = (
                f"the guest showed no progress for {self.limits.stall:.0f} s"
                f" (last at {self.last_progress:.0f} s{self._last_phase()})"
            )
        return self.verdict

    def _mark(self, phase: str, now: float) -> None:
        self.phases.setdefault(phase, round(now, 1))

    def _phases(self, snap: Snapshot) -> None:
        if KERNEL_BANNER in snap.console:
            self._mark("kernel", snap.now)
        if LOGIN_PROMPT in snap.console:
            self._mark("login", snap.now)
        if CLOUD_INIT_FINISHED.search(snap.console):
            self._mark("cloud-init", snap.now)

    def _last_phase(self) -> str:
        if not self.phases:
            return ", before the kernel"
        name = max(self.phases, key=lambda p: self.phases[p])
        section = self.heartbeats[-1].get("section") if self.heartbeats else None
        return f", after {name}" + (f", gathering {section}" if section else "")


def parse_port(text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The gatherer's heartbeats and, once written, its facts: one JSON document a line."""
    beats: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if not isinstance(doc, dict):
            continue
        if "trove_boot_progress" in doc:
            beats.append(doc)
        elif "trove_boot_facts" in doc:
            facts = doc.get("facts")
            return beats, facts if isinstance(facts, dict) else None
    return beats, None


def fatal_reason(
    console: str, phases: dict[str, float], now: float, gatherer_seen: bool
) -> str | None:
    """Why no facts can come any more, if the console already shows it."""
    for marker, meaning in FATAL_CONSOLE:
        if marker in console:
            return f"{meaning} ({marker!r} on the console)"
    finished = CLOUD_INIT_FINISHED.search(console)
    if finished and finished.group(1) == "DataSourceNone":
        return "cloud-init found no datasource (DataSourceNone): the user data never arrived"
    if "login" in phases and "cloud-init" not in console.lower():
        # Debian's units print cloud-init's start to the console long before the login prompt;
        # none at all means ds-identify found no datasource and disabled cloud-init.
        return "the guest reached its login prompt without running cloud-init (no datasource)"
    if finished and not gatherer_seen and now - phases.get("cloud-init", now) > GATHERER_GRACE:
        return (
            f"cloud-init finished {now - phases['cloud-init']:.0f} s ago and the fact gatherer "
            "from the user data never started"
        )
    return None
