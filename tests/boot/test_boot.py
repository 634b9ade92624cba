"""Boot real images under QEMU (TCG here) and check them as Trove's control plane would.

Positive: the production raw image through the metadata service, the dev vmdk through a config
drive. Negative: one boot per image that lacks one thing; its check must fail with the cause,
and every other check must pass or name the failed check it waits on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assembler.accel import Accel
from assembler.boottest.checks import Status
from assembler.boottest.harness import BootTestOptions, Mode, run_boot_test
from assembler.boottest.vm import Timeouts
from tests.boot.conftest import NEGATIVES
from tests.builds import Built

pytestmark = pytest.mark.boot

# Facts normally follow the login prompt by 20-50 s under TCG; a negative image that never
# sends them should not hold the suite for the interactive default.
TEST_TIMEOUTS = Timeouts(facts=300, after_login=100)


def test_production_image_through_the_metadata_service(
    raw_production: Built, tmp_path: Path
) -> None:
    report_path, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "assembler", "boot-test", str(raw_production.image), "--accel", "tcg",
         "--report", str(report_path), "--junit", str(junit)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["passed"] is True
    by = {c["name"]: c for c in report["checks"]}
    assert by["datasource"]["passed"] and "DataSourceOpenStack" in by["datasource"]["detail"]
    assert all(c["passed"] and c["status"] == "passed" for c in by.values()), by
    # The real agent, baked in the image, answered Trove's calls over the bus.
    assert "rpc_ping answered" in by["agent-rpc"]["detail"]
    assert "get_filesystem_stats" in by["agent-volume"]["detail"]
    # The guest really used our metadata service: cloud-init read the instance's documents.
    paths = {r["path"] for r in report["metadata_requests"] if r["status"] == 200}
    assert any(p.endswith("/meta_data.json") for p in paths)
    assert any(p.endswith("/user_data") for p in paths)
    assert report["boot_seconds"] < 180
    assert "<testsuite" in junit.read_text()
    assert "PASSED" in proc.stdout


def test_dev_vmdk_through_a_config_drive(vmdk_dev: Built) -> None:
    # Dev mode: no trove in the image; the guest fetches it from the harness's controller.
    assert vmdk_dev.manifest["agent"]["baked"] is False
    report = run_boot_test(
        BootTestOptions(
            image=vmdk_dev.image, mode=Mode.CONFIG_DRIVE, accel=Accel.TCG, timeouts=TEST_TIMEOUTS
        )
    )
    by = {c.name: c for c in report.checks}
    assert report.passed, report.table()
    assert "DataSourceConfigDrive" in by["datasource"].detail
    assert report.metadata_requests == []
    assert by["agent-rpc"].status is Status.PASSED


@pytest.mark.parametrize("name", sorted(NEGATIVES))
def test_negative_image_fails_the_right_check(
    name: str, negative_images: dict[str, Path], tmp_path: Path
) -> None:
    _, _, check, cause = NEGATIVES[name]
    report = run_boot_test(
        BootTestOptions(
            image=negative_images[name], accel=Accel.TCG, guest_username="ubuntu",
            timeouts=TEST_TIMEOUTS, artifacts=tmp_path / "artifacts",
        )
    )  # fmt: skip
    by = {c.name: c for c in report.checks}
    assert not report.passed
    assert by[check].status is Status.FAILED, report.table()
    assert cause in by[check].detail, report.table()
    for c in report.checks:
        if c.name == check:
            continue
        assert c.status in (Status.PASSED, Status.NOT_APPLICABLE) or (
            c.status is Status.NOT_RUN and c.depends_on is not None
        ), report.table()
        # A check that waits names what it waits on; the chain ends at the failed check.
        blocker = c
        while blocker.status is Status.NOT_RUN:
            assert blocker.depends_on is not None, report.table()
            blocker = by[blocker.depends_on]
        assert blocker.status in (Status.PASSED, Status.NOT_APPLICABLE) or blocker.name == check, (
            report.table()
        )
    # Failure evidence is kept: the console log at least, and a screendump without facts.
    assert (tmp_path / "artifacts" / "console.log").stat().st_size > 0


def test_wrong_bus_url_fails_the_rpc_check(raw_production: Built, tmp_path: Path) -> None:
    """The broker runs, but the injected config sends the agent to a port nobody forwards."""
    report = run_boot_test(
        BootTestOptions(
            image=raw_production.image, accel=Accel.TCG, timeouts=Timeouts(facts=300, after_login=100, agent=60),
            rabbit=True, transport_url="rabbit://guest:guest@169.254.0.100:5673/",
            artifacts=tmp_path / "artifacts",
        )
    )  # fmt: skip
    by = {c.name: c for c in report.checks}
    assert by["agent-rpc"].status is Status.FAILED, report.table()
    assert "guestagent." in by["agent-rpc"].detail
    assert (
        by["agent-volume"].status is Status.NOT_RUN and by["agent-volume"].depends_on == "agent-rpc"
    )
    assert all(
        c.status is Status.PASSED
        for c in report.checks
        if c.name not in ("agent-rpc", "agent-volume")
    ), report.table()


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
