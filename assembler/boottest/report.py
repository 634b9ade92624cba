"""The boot test's report: a table on the terminal, JSON, and JUnit XML for CI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler.boottest.checks import CheckResult, Status
from assembler.manifest import write_atomically


@dataclass
class Report:
    image: str
    mode: str
    checks: list[CheckResult]
    boot_seconds: float | None
    artifacts: dict[str, str] = field(default_factory=dict)
    metadata_requests: list[tuple[str, int]] = field(default_factory=list)
    # Seconds from QEMU's start to each phase the guest reached (vm.BootResult.phases).
    phases: dict[str, float] = field(default_factory=dict)
    stopped_because: str | None = None  # why the harness stopped waiting, when not for facts
    # The taskmanager's calls and what the conductor heard (statuses with their seconds).
    bus: dict[str, Any] = field(default_factory=dict)
    firmware: str = "bios"

    @property
    def passed(self) -> bool:
        return all(c.status in (Status.PASSED, Status.NOT_APPLICABLE) for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "image": self.image,
            "mode": self.mode,
            "firmware": self.firmware,
            "boot_seconds": None if self.boot_seconds is None else round(self.boot_seconds, 1),
            "checks": [
                {
                    "name": c.name,
                    "passed": c.passed,
                    "status": str(c.status),
                    "detail": c.detail,
                    "seconds": round(c.seconds, 2),
                    "depends_on": c.depends_on,
                }
                for c in self.checks
            ],
            "phases": self.phases,
            "stopped_because": self.stopped_because,
            "bus": self.bus,
            "artifacts": self.artifacts,
            "metadata_requests": [{"path": p, "status": s} for p, s in self.metadata_requests],
        }

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"boot test of {self.image} ({self.mode}, {self.firmware})"]
        for c in self.checks:
            lines.append(f"  {c.name:<{width}}  {c.status.upper():<14}  {c.detail}")
        boot = "n/a" if self.boot_seconds is None else f"{self.boot_seconds:.0f} s"
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"{verdict}: facts after {boot}")
        if self.phases:
            lines.append("  time: " + self.timeline())
        if self.stopped_because:
            lines.append(f"  stopped waiting: {self.stopped_because}")
        return "\n".join(lines)

    def timeline(self) -> str:
        """Where the time went: each phase, in the order reached, with seconds since QEMU's
        start and the longest gatherer sections."""
        order = sorted(self.phases.items(), key=lambda item: item[1])
        text = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in order)
        slow = sorted(self.checks, key=lambda c: c.seconds, reverse=True)[:3]
        slow = [c for c in slow if c.seconds >= 1.0]
        if slow:
            text += " (longest: " + ", ".join(f"{c.name} {c.seconds:.0f} s" for c in slow) + ")"
        return text

    def write_json(self, path: Path) -> None:
        write_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def write_junit(self, path: Path) -> None:
        suite = ET.Element(
            "testsuite",
            name=f"boot-test.{self.mode}",
            tests=str(len(self.checks)),
            failures=str(sum(c.status is Status.FAILED for c in self.checks)),
            errors="0",
            skipped=str(
                sum(c.status in (Status.NOT_APPLICABLE, Status.NOT_RUN) for c in self.checks)
            ),
            time=f"{self.boot_seconds or 0:.1f}",
        )
        for c in self.checks:
            case = ET.SubElement(
                suite, "testcase", classname=f"boot-test.{self.mode}", name=c.name,
                time=f"{c.seconds:.2f}",
            )  # fmt: skip
            if c.status is Status.FAILED:
                ET.SubElement(case, "failure", message=c.detail).text = c.detail
            elif c.status is not Status.PASSED:
                ET.SubElement(case, "skipped", message=c.detail)
        root = ET.Element("testsuites")
        root.append(suite)
        ET.indent(root)
        write_atomically(path, ET.tostring(root, encoding="unicode") + "\n")
