"""Boot real images under QEMU (TCG here) and check them as Trove's control plane would.

Positive: the production raw image through the metadata service (its agent answers over a
private RabbitMQ), the dev vmdk through a config drive (its agent fetched from a controller on
loopback). Negative: images with faults planted (tests/boot/faults.py); each fault's check must
fail with its cause, and every other check must pass or name the failed check it waits on.

`make test` boots the positives and the three images with faults combined (every fault of
the combined images judged in one boot each); `make test-all` (marker `full`) boots every fault
alone as well, among them those that cannot share an image.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.boot.conftest import BootPool, boot_of, negative_boot
from tests.boot.faults import COMBINED, FAULTS
from tests.builds import Built

pytestmark = pytest.mark.boot

# Faults whose check everything else depends on: they can share an image with no other.
ALONE = ("no-kernel", "no-openstack-datasource")
# Faults of a datastore run that hide each other (no database: no query): alone as well.
DATASTORE_ALONE = ("entrypoint-dies", "user-never-created")
# The combined images in both tiers (make test's budget holds three boots of faults); the
# longest boots first (the pool runs them in this order, two at a time).
NEGATIVES = [
    *(pytest.param(name, id=name) for name in COMBINED),
    *(
        pytest.param(name, id=name, marks=pytest.mark.full)
        for name in (*DATASTORE_ALONE, *(f for f in FAULTS if f not in DATASTORE_ALONE))
    ),
]
DATASTORE_CHECKS = ("datastore-image", "datastore-prepare", "datastore-query")


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def table(report: dict[str, Any]) -> str:
    rows = [f"{c['name']}: {c['status']} {c['detail']}" for c in report.get("checks", [])]
    extra = f"phases {report.get('phases')}; stopped: {report.get('stopped_because')}"
    return "\n".join([*rows, extra])


# make test's budget: one boot proves the production image and Trove's create on it (the
# PostgreSQL boot passes every check the plain one does, and the datastore's); test-all boots the
# plain one too.
@pytest.mark.parametrize(
    "boot", ["postgresql-from-registry", pytest.param("production", marks=pytest.mark.full)]
)
def test_production_image_through_the_metadata_service(boot: str, boots: BootPool) -> None:
    result = boots.result(boot)
    report = result.report
    assert result.returncode == 0, result.output
    assert report["passed"] is True
    assert report["firmware"] == "bios"
    by = checks(report)
    assert by["datasource"]["passed"] and "DataSourceOpenStack" in by["datasource"]["detail"]
    # Everything passed; without a database (--datastore) what needs one does not apply.
    with_database = "--datastore" in boot_of(boot).args
    assert all(
        c["status"]
        == ("not-applicable" if c["name"] in DATASTORE_CHECKS and not with_database else "passed")
        for c in by.values()
    ), by
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
    # The base is hybrid, as the distros' images: the manifest says so, and OVMF boots it.
    assert vmdk_dev.manifest["firmware"] == ["bios", "uefi"]
    report = boots.result(boot).report
    by = checks(report)
    assert report["passed"], table(report)
    assert report["firmware"] == "uefi"
    assert "DataSourceConfigDrive" in by["datasource"]["detail"]
    assert report["metadata_requests"] == []
    assert by["agent-rpc"]["status"] == "passed"


@pytest.mark.full
@pytest.mark.parametrize("boot", ["trixie-production", "trixie-dev"])
def test_debian_trixie_images_boot_with_the_agent(boot: str, boots: BootPool, request: Any) -> None:
    built: Built = request.getfixturevalue(boot.replace("-", "_"))
    assert built.manifest["agent"]["python"] == "3.13"
    assert built.manifest["firmware"] == ["bios", "uefi"]
    report = boots.result(boot).report
    by = checks(report)
    assert report["passed"], table(report)
    assert report["firmware"] == ("uefi" if boot == "trixie-dev" else "bios")
    assert "rpc_ping answered" in by["agent-rpc"]["detail"], table(report)
    assert all(
        c["status"] == ("not-applicable" if c["name"] in DATASTORE_CHECKS else "passed")
        for c in by.values()
    ), table(report)


def assert_database_created(report: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Trove's create went through: the image came from where it should, the conductor heard
    the agent report the instance healthy, and a client used the database as prepare's user."""
    by = checks(report)
    assert report["passed"], table(report)
    assert all(by[c]["status"] == "passed" for c in DATASTORE_CHECKS), table(report)
    assert source in by["datastore-image"]["detail"], table(report)
    statuses = [s["status"] for s in report["bus"]["prepare"]["statuses"]]
    assert statuses[0] == "building" and statuses[-1] == "healthy", statuses
    assert "trove_boot" in by["datastore-query"]["detail"], table(report)
    phases = report["phases"]
    assert phases["bus"] <= phases["stopped"], phases
    assert "healthy" in phases and phases["healthy"] < phases["bus"], phases
    return by


@pytest.mark.parametrize(
    "boot",
    ["postgresql-from-registry", pytest.param("mariadb-from-registry", marks=pytest.mark.full)],
)
def test_a_database_from_the_registry(boot: str, boots: BootPool) -> None:
    result = boots.result(boot)
    assert result.returncode == 0, result.output
    assert_database_created(result.report, "pulled from the registry")


@pytest.mark.full  # its own build (the datastore layer) and a boot: make test's budget
@pytest.mark.parametrize("boot", ["mariadb-embedded"])
def test_a_database_from_an_image_in_docker_s_store_with_no_registry(
    boot: str, boots: BootPool, qcow2_embedded: Any
) -> None:
    result = boots.result(boot)
    assert result.returncode == 0, result.output
    by = assert_database_created(result.report, "already in the image (embedded")
    assert "no registry reachable" in by["datastore-image"]["detail"]
    # In docker's store from the build: nothing was loaded at boot.
    assert "loaded in" not in by["image-loader"]["detail"], by["image-loader"]
    # The manifest names what is embedded by digest, and how it landed.
    (embedded,) = qcow2_embedded.manifest["datastore_images"]
    assert embedded["ref"] == "docker.io/trove-test-double/mariadb:10.11"
    assert embedded["image_id"].startswith("sha256:") and embedded["landed"] == "docker-store"


@pytest.mark.full
@pytest.mark.parametrize("boot", ["postgresql-first-boot"])
def test_a_database_from_an_image_loaded_at_first_boot(
    boot: str, boots: BootPool, qcow2_first_boot: Any
) -> None:
    result = boots.result(boot)
    assert result.returncode == 0, result.output
    by = assert_database_created(result.report, "already in the image (embedded")
    # trove-image-loader loaded the archive before the agent started, and says how long it took.
    assert "loaded in" in by["image-loader"]["detail"], by["image-loader"]
    (embedded,) = qcow2_first_boot.manifest["datastore_images"]
    assert embedded["landed"] == "first-boot"


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
    if boot in ALONE:
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
