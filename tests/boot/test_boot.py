"""Boot real images under QEMU (TCG here) and check them as Trove's control plane would.

Positive: the production raw image through the metadata service (its agent answers over a
private RabbitMQ), the dev vmdk through a config drive (its agent fetched from a controller on
loopback). Negative: images with faults planted (tests/boot/faults.py); each fault's check must
fail with its cause, and every other check must pass or name the failed check it waits on.

`make test` boots the positives, the combined negatives and the two faults that leave nothing
else to judge; `make test-all` (marker `full`) boots every fault alone as well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.boot.conftest import BootPool, negative_boot
from tests.boot.faults import COMBINED, FAULTS

pytestmark = pytest.mark.boot

# Faults whose check everything else depends on: alone in an image, in both tiers.
ALONE_IN_BOTH = ("no-kernel", "no-openstack-datasource")
NEGATIVES = [
    *(pytest.param(name, id=name) for name in COMBINED),
    *(pytest.param(name, id=name) for name in ALONE_IN_BOTH),
    *(
        pytest.param(name, id=name, marks=pytest.mark.full)
        for name in FAULTS
        if name not in ALONE_IN_BOTH
    ),
]


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def table(report: dict[str, Any]) -> str:
    rows = [f"{c['name']}: {c['status']} {c['detail']}" for c in report.get("checks", [])]
    extra = f"phases {report.get('phases')}; stopped: {report.get('stopped_because')}"
    return "\n".join([*rows, extra])


@pytest.mark.parametrize("boot", ["production"])
def test_production_image_through_the_metadata_service(boot: str, boots: BootPool) -> None:
    result = boots.result(boot)
    report = result.report
    assert result.returncode == 0, result.output
    assert report["passed"] is True
    by = checks(report)
    assert by["datasource"]["passed"] and "DataSourceOpenStack" in by["datasource"]["detail"]
    assert all(c["passed"] and c["status"] == "passed" for c in by.values()), by
    # The real agent, baked in the image, answered Trove's calls over the bus, and its volume
    # is the disk attached as one, not the root filesystem.
    assert "rpc_ping answered" in by["agent-rpc"]["detail"]
    assert "get_filesystem_stats" in by["agent-volume"]["detail"]
    # The guest really used our metadata service: cloud-init read the instance's documents.
    paths = {r["path"] for r in report["metadata_requests"] if r["status"] == 200}
    assert any(p.endswith("/meta_data.json") for p in paths)
    assert any(p.endswith("/user_data") for p in paths)
    # Where the time went: every phase up to the taskmanager's calls, in order.
    phases = report["phases"]
    order = ["qmp", "kernel", "login", "cloud-init", "gatherer", "facts", "bus"]
    assert [p for p in order if p in phases] == order, phases
    assert [phases[p] for p in order] == sorted(phases[p] for p in order), phases
    assert report["stopped_because"] is None
    assert "<testsuite" in (result.artifacts.parent / "junit.xml").read_text()
    assert "PASSED" in result.output


@pytest.mark.parametrize("boot", ["dev-config-drive"])
def test_dev_vmdk_through_a_config_drive(boot: str, boots: BootPool, vmdk_dev: Any) -> None:
    # Dev mode: no trove in the image; the guest fetches it from the harness's controller.
    assert vmdk_dev.manifest["agent"]["baked"] is False
    report = boots.result(boot).report
    by = checks(report)
    assert report["passed"], table(report)
    assert "DataSourceConfigDrive" in by["datasource"]["detail"]
    assert report["metadata_requests"] == []
    assert by["agent-rpc"]["status"] == "passed"


@pytest.mark.parametrize("boot", NEGATIVES)
def test_negative_image_fails_the_right_checks(boot: str, boots: BootPool) -> None:
    result = boots.result(boot)
    report, by = result.report, checks(result.report)
    assert result.returncode == 1, result.output
    assert not report["passed"]
    faults = negative_boot(boot).faults
    failing = {FAULTS[f].check for f in faults}
    allowed = failing | {c for f in faults for c in FAULTS[f].also_fails}
    for fault in faults:
        check = FAULTS[fault].check
        assert by[check]["status"] == "failed", f"{fault}: {check}\n{table(report)}"
        assert FAULTS[fault].cause in by[check]["detail"], f"{fault}\n{table(report)}"
    for c in by.values():
        if c["name"] in allowed:
            assert c["status"] in ("failed", "not-run"), table(report)
            continue
        assert c["status"] in ("passed", "not-applicable", "not-run"), table(report)
        # A check that waits names what it waits on; the chain ends at a planted fault's check.
        blocker = c
        while blocker["status"] == "not-run":
            assert blocker["depends_on"] is not None, table(report)
            blocker = by[blocker["depends_on"]]
        assert blocker["status"] in ("passed", "not-applicable") or blocker["name"] in allowed, (
            table(report)
        )
    # Failure evidence is kept: the console log at least.
    assert (result.artifacts / "console.log").stat().st_size > 0
    # Faults the console shows end the boot at once, not after a silence.
    if boot in ALONE_IN_BOTH:
        assert report["stopped_because"] and "no progress" not in report["stopped_because"]
        assert "facts" not in report["phases"], report["phases"]


def test_boot_test_bad_input(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "assembler", "boot-test", str(tmp_path / "nope.qcow2")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    iso = tmp_path / "x.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "/etc/hostname"], check=True)
    wrong = subprocess.run(
        [sys.executable, "-m", "assembler", "boot-test", str(iso)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 2 and "is not a disk image" in wrong.stderr
    cpus = subprocess.run(
        [sys.executable, "-m", "assembler", "boot-test", str(iso), "--cpus", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cpus.returncode == 2 and cpus.stderr.startswith("error: ")
