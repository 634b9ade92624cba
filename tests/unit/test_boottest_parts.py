"""The boot test's host-side parts: instance data, metadata service, config drive, QEMU argv,
judging facts, reports. No VM here (tests/boot boots real ones)."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from assembler.accel import Accel
from assembler.boottest.checks import CHECK_NAMES, Expectations, Status, judge
from assembler.boottest.configdrive import build_config_drive
from assembler.boottest.instance import InjectedFile, Instance
from assembler.boottest.metadata import MetadataService
from assembler.boottest.report import Report
from assembler.boottest.vm import Forward, MachineSpec

FILES = (
    InjectedFile(
        "/etc/trove/conf.d/guest_info.conf", "[DEFAULT]\nguest_id=x\n", "ubuntu:root", "0640"
    ),
)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY trove-boot-test"


def instance() -> Instance:
    return Instance(
        "ubuntu", KEY, FILES, uuid="0e5c1b2a-0000-4000-8000-000000000001", hostname="db-1"
    )


def test_metadata_service_answers_like_nova() -> None:
    with MetadataService(instance()) as md:

        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{md.port}{path}", timeout=5) as r:
                return bytes(r.read())

        versions = get("/openstack").decode().split()
        assert "latest" in versions and "2018-08-27" in versions
        assert all(not v.endswith("/") for v in versions)
        meta = json.loads(get("/openstack/latest/meta_data.json"))
        assert meta["uuid"] == instance().uuid and meta["hostname"] == "db-1"
        assert meta["public_keys"] == {"trove-boot-test": KEY}
        assert meta["files"] == [{"path": FILES[0].path, "content_path": "/content/0000"}]
        assert get("/openstack/content/0000") == FILES[0].content.encode()
        assert get("/openstack/latest/user_data").startswith(b"#cloud-config\n")
        assert json.loads(get("/openstack/latest/network_data.json"))["links"][0]["type"] == "phy"
        assert get("/latest/meta-data/local-hostname") == b"db-1"
        assert b"placement/" in get("/2009-04-04/meta-data/")
        with pytest.raises(urllib.error.HTTPError):
            get("/openstack/latest/password")
        assert ("/openstack/latest/password", 404) in md.requests


def test_user_data_carries_the_injected_files_and_the_gatherer() -> None:
    doc = yaml.safe_load(instance().user_data())
    paths = {f["path"]: f for f in doc["write_files"]}
    assert paths[FILES[0].path]["owner"] == "ubuntu:root"
    assert paths[FILES[0].path]["permissions"] == "0640"
    assert "/var/lib/trove-boot-check/guest_facts.py" in paths
    # The key detector the build shares, where the gatherer's import finds it.
    assert "/var/lib/trove-boot-check/assembler/keyscan.py" in paths
    assert "/etc/systemd/system/trove-boot-check.service" in paths
    assert doc["runcmd"] == [["systemctl", "start", "--no-block", "trove-boot-check.service"]]


def test_config_drive_is_labelled_and_readable(tmp_path: Path) -> None:
    iso = tmp_path / "cd.iso"
    build_config_drive(instance(), iso)
    info = subprocess.run(["isoinfo", "-d", "-i", iso], capture_output=True, text=True, check=True)
    assert "Volume id: config-2" in info.stdout
    listing = subprocess.run(
        ["xorriso", "-indev", iso, "-find", "/", "-type", "f"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'/openstack/latest/meta_data.json'" in listing
    assert "'/openstack/content/0000'" in listing
    out = tmp_path / "meta.json"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/openstack/latest/meta_data.json", out],
        capture_output=True, check=True,
    )  # fmt: skip
    assert json.loads(out.read_text())["hostname"] == "db-1"


def test_qemu_is_fenced_to_the_harness_services(tmp_path: Path) -> None:
    spec = MachineSpec(
        disk=tmp_path / "d.qcow2", volume=tmp_path / "v.qcow2", config_drive=tmp_path / "cd.iso",
        forwards=(Forward("169.254.169.254", 80, 4321),), accel=Accel.TCG, uuid="u", mac="fa:16:3e:00:00:01",
        workdir=tmp_path,
    )  # fmt: skip
    argv = spec.argv()
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev.split(",")
    assert "guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO TCP:127.0.0.1:4321" in netdev
    # Every forward ends at loopback; no hostfwd or other network backend is added.
    assert netdev.count("guestfwd=") == 1 and "hostfwd" not in netdev
    assert argv.count("-netdev") == 1 and "-nic" not in argv
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0].startswith(f"file={tmp_path / 'd.qcow2'},if=virtio")
    assert drives[1].startswith(f"file={tmp_path / 'v.qcow2'},if=virtio")
    assert "media=cdrom,if=ide" in drives[2]  # never virtio: the agent formats /dev/vdb
    assert "product=OpenStack Nova" in argv[argv.index("-smbios") + 1]


GOOD_FACTS: dict[str, Any] = {
    "boot_time": 1000.0,
    "cloud_init_result": {
        "v1": {"datasource": "DataSourceOpenStackLocal [net,ver=2]", "errors": []}
    },
    "cloud_init_status": {"rc": 0, "out": "status: done\n"},
    "hostname": "db-1",
    "user": {
        "exists": True,
        "groups": ["docker", "sudo"],
        "sudo": {"rc": 0, "out": ""},
        "authorized_keys": KEY + "\n",
    },
    "docker_active": "active",
    "docker_enabled": "enabled",
    "docker_info": {"rc": 0, "out": "20.10.24\n"},
    "agent": {
        "unit": {"ActiveState": "active", "SubState": "running", "Result": "success"},
        "enabled": "enabled",
        "journal": "",
        "log": {"exists": True, "owner": "ubuntu", "group": "root", "mode": "0644", "size": 2048},
        "image_loader": {"ActiveState": "active", "Result": "success", "ExecMainStatus": "0"},
        "image_loader_log": "docker_image: mysql:8.0 present",
        "hostnic_socket": {"ActiveState": "active"},
        "hostnic_listening": True,
    },
    "bus": {
        "rpc": {"ok": True, "detail": "rpc_ping answered after 81 s", "seconds": 81.0},
        "volume": {"ok": True, "detail": "1.0 GB volume", "seconds": 0.1},
    },
    "injected": {
        FILES[0].path: {
            "exists": True,
            "owner": "ubuntu",
            "group": "root",
            "mode": "0640",
            "sha256": hashlib.sha256(FILES[0].content.encode()).hexdigest(),
        }
    },
    "root": {
        "fs_bytes": 6 * 2**30 - 200 * 2**20,
        "part_bytes": 6 * 2**30 - 2**20,
        "partitions_bytes": 6 * 2**30 - 2**20,
        "disk_bytes": 6 * 2**30,
    },
    "network": {
        "reachable": [{"addr": "169.254.169.254", "port": 80, "open": True}],
        "unreachable": [
            {"addr": "169.254.0.2", "port": 22, "open": False, "error": "timed out"},
            {"addr": "192.0.2.1", "port": 80, "open": False, "error": "timed out"},
        ],
    },
    "private_keys": [{"path": "/etc/ssh/ssh_host_ed25519_key", "mtime": 1010.0}],
    "leftovers": [],
    "seconds": {"docker": 0.5},
}


def expectations(**kw: Any) -> Expectations:
    base = {
        "datasource": "OpenStack",
        "guest_username": "ubuntu",
        "hostname": "db-1",
        "public_key": KEY,
        "files": FILES,
    }
    return Expectations(**{**base, **kw})


def verdicts(facts: dict[str, Any] | None, **kw: Any) -> dict[str, tuple[Status, str]]:
    results = judge(
        facts, expectations(**kw), booted=True, boot_detail="booted", no_facts_detail="no facts"
    )
    assert [r.name for r in results] == list(CHECK_NAMES)
    return {r.name: (r.status, r.detail) for r in results}


DATASTORE_CHECKS = {"datastore-image", "datastore-prepare", "datastore-query"}
AGENT_CHECKS = {
    "hostnic", "image-loader", "agent", "agent-log", "agent-rpc", "agent-volume",
    *DATASTORE_CHECKS,
}  # fmt: skip
PUSHED = "sha256:" + "ab" * 32
REF = "169.254.0.102:5000/trove-test-double/postgresql:15"


def datastore_facts(**image: Any) -> dict[str, Any]:
    facts = copy.deepcopy(GOOD_FACTS)
    facts["agent"]["datastore_image"] = {
        "ref": REF,
        "present": True,
        "id": "sha256:" + "cd" * 32,
        "repo_digests": [f"{REF.rsplit(':', 1)[0]}@{PUSHED}"],
        **image,
    }
    facts["bus"]["prepare"] = {"ok": True, "detail": "healthy after 300 s", "seconds": 300.0}
    facts["bus"]["query"] = {"ok": True, "detail": "round trip as trove_boot", "seconds": 1.0}
    return facts


def test_good_facts_pass_and_agent_checks_are_not_applicable_without_agent() -> None:
    v = verdicts(copy.deepcopy(GOOD_FACTS))
    assert {n: s for n, (s, _) in v.items() if s is not Status.PASSED} == dict.fromkeys(
        AGENT_CHECKS, Status.NOT_APPLICABLE
    )
    # With an agent but no --datastore, only the datastore checks do not apply.
    v = verdicts(copy.deepcopy(GOOD_FACTS), has_agent=True)
    assert {n: s for n, (s, _) in v.items() if s is not Status.PASSED} == dict.fromkeys(
        DATASTORE_CHECKS, Status.NOT_APPLICABLE
    )
    v = verdicts(datastore_facts(), has_agent=True, datastore_image=REF, pushed_digest=PUSHED)
    assert all(s is Status.PASSED for s, _ in v.values()), v
    assert "pulled from the registry" in v["datastore-image"][1]


def test_an_embedded_image_says_so() -> None:
    facts = datastore_facts(repo_digests=[])
    v = verdicts(facts, has_agent=True, datastore_image=REF, pushed_digest=None)
    assert v["datastore-image"][0] is Status.PASSED
    assert "already in the image (embedded" in v["datastore-image"][1]
    assert "no registry reachable" in v["datastore-image"][1]


def test_a_missing_datastore_image_fails_and_prepare_is_not_run() -> None:
    facts = datastore_facts(present=False, error="No such image")
    facts["agent"]["image_loader_log"] = "docker_image: pulling x\nhttp: server gave HTTP response"
    v = verdicts(facts, has_agent=True, datastore_image=REF, pushed_digest=PUSHED)
    assert v["datastore-image"][0] is Status.FAILED and "HTTP response" in v["datastore-image"][1]
    assert v["datastore-prepare"][0] is Status.NOT_RUN
    assert v["datastore-query"][0] is Status.NOT_RUN


def test_an_image_from_another_registry_fails() -> None:
    facts = datastore_facts(repo_digests=["elsewhere/pg@sha256:" + "ee" * 32])
    v = verdicts(facts, has_agent=True, datastore_image=REF, pushed_digest=PUSHED)
    assert v["datastore-image"][0] is Status.FAILED and "elsewhere" in v["datastore-image"][1]


def test_a_failed_prepare_blocks_the_query() -> None:
    facts = datastore_facts()
    facts["bus"]["prepare"] = {"ok": False, "detail": "failed to spawn", "seconds": 90.0}
    facts["bus"].pop("query")
    v = verdicts(facts, has_agent=True, datastore_image=REF, pushed_digest=PUSHED)
    assert v["datastore-prepare"] == (Status.FAILED, "failed to spawn")
    assert v["datastore-query"][0] is Status.NOT_RUN


def broken(path: str, value: Any) -> dict[str, Any]:
    facts = copy.deepcopy(GOOD_FACTS)
    node = facts
    keys = path.split(".", 1) if path.startswith("injected.") else path.split(".")
    if path.startswith("injected."):
        # The injected file's path holds dots itself: injected.<path>.<field>.
        file_path, field = keys[1].rsplit(".", 1)
        keys = ["injected", file_path, field]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return facts


@pytest.mark.parametrize(
    ("path", "value", "check", "cause"),
    [
        ("cloud_init_result.v1.datasource", "DataSourceNone", "datasource", "DataSourceNone"),
        ("cloud_init_result.v1.errors", ["boom"], "cloud-init", "boom"),
        ("hostname", "localhost", "hostname", "'localhost'"),
        ("user.groups", ["docker"], "default-user", "not in group sudo"),
        (
            "user.sudo",
            {"rc": 1, "out": "sudo: a password is required"},
            "default-user",
            "password is required",
        ),
        ("user.authorized_keys", "", "default-user", "metadata key"),
        ("docker_active", "inactive", "docker", "inactive"),
        ("docker_info", {"rc": 1, "out": "Cannot connect"}, "docker", "Cannot connect"),
        ("injected", {}, "injected-files", "missing"),
        (f"injected.{FILES[0].path}.mode", "0660", "injected-files", "0660, not ubuntu:root 0640"),
        ("root.fs_bytes", 2 * 2**30, "root-grown", "2.00 GiB"),
        ("root.partitions_bytes", 2 * 2**30, "root-grown", "not grown"),
        (
            "network.unreachable",
            [{"addr": "192.0.2.1", "port": 80, "open": True}],
            "network-isolation",
            "192.0.2.1:80",
        ),
        (
            "network.reachable",
            [{"addr": "169.254.169.254", "port": 80, "open": False, "error": "refused"}],
            "network-isolation",
            "did not answer",
        ),
        ("network", {}, "network-isolation", "did not probe"),
        (
            "private_keys",
            [{"path": "/root/.ssh/id_rsa", "mtime": 1.0}],
            "private-keys",
            "/root/.ssh/id_rsa",
        ),
        (
            "private_keys",
            [{"path": "/etc/ssh/ssh_host_rsa_key", "mtime": 1.0}],
            "private-keys",
            "ssh_host_rsa_key",
        ),
        ("leftovers", ["/usr/sbin/policy-rc.d"], "build-secrets", "policy-rc.d"),
    ],
)
def test_each_check_fails_on_its_cause(path: str, value: Any, check: str, cause: str) -> None:
    v = verdicts(broken(path, value))
    assert v[check][0] is Status.FAILED
    assert cause in v[check][1]
    others = {n: s for n, (s, _) in v.items() if n != check}
    for name, status in others.items():
        assert status in (Status.PASSED, Status.NOT_APPLICABLE, Status.NOT_RUN), name


def test_a_failed_datasource_blocks_what_depends_on_it() -> None:
    v = verdicts(broken("cloud_init_result.v1.datasource", "DataSourceNone"))
    for name in ("cloud-init", "hostname", "default-user", "injected-files"):
        assert v[name] == (Status.NOT_RUN, "not checked: datasource failed")
    assert v["docker"][0] is Status.PASSED


def test_no_facts_fails_datasource_with_the_console_evidence() -> None:
    results = judge(
        None,
        expectations(),
        booted=True,
        boot_detail="booted",
        no_facts_detail="console: ds-identify says none",
    )
    by = {r.name: r for r in results}
    assert by["boot"].status is Status.PASSED
    assert by["datasource"].status is Status.FAILED and "ds-identify" in by["datasource"].detail
    assert all(
        by[n].depends_on == "datasource"
        for n in CHECK_NAMES
        if n not in ("boot", "datasource") and n not in AGENT_CHECKS
    )
    assert all(by[n].status is Status.NOT_APPLICABLE for n in AGENT_CHECKS)


@pytest.mark.parametrize(
    ("path", "value", "check", "cause", "blocked"),
    [
        (
            "agent.unit",
            {"ActiveState": "failed", "SubState": "failed"},
            "agent",
            "failed/failed",
            {"agent-log", "agent-rpc", "agent-volume"},
        ),
        ("agent.log", {"exists": False}, "agent-log", "trove-guestagent.log", set()),
        (
            "agent.log",
            {"exists": True, "owner": "ubuntu", "size": 0},
            "agent-log",
            "is empty: the agent opened it but never wrote",
            set(),
        ),
        (
            "agent.image_loader",
            {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "1"},
            "image-loader",
            "exit-code",
            set(),
        ),
        ("agent.hostnic_listening", False, "hostnic", "docker-hostnic.socket", set()),
        (
            "bus.rpc",
            {"ok": False, "detail": "no agent listens on topic guestagent.x", "seconds": 5},
            "agent-rpc",
            "no agent listens",
            {"agent-volume"},
        ),
        (
            "bus.volume",
            {"ok": False, "detail": "Filesystem not found", "seconds": 1},
            "agent-volume",
            "Filesystem not found",
            set(),
        ),
    ],
)
def test_agent_checks_fail_on_their_cause(
    path: str, value: Any, check: str, cause: str, blocked: set[str]
) -> None:
    v = verdicts(broken(path, value), has_agent=True)
    assert v[check][0] is Status.FAILED and cause in v[check][1]
    assert {n for n, (s, _) in v.items() if s is Status.NOT_RUN} == blocked
    others = {n: s for n, (s, _) in v.items() if n != check and n not in blocked}
    assert all(
        s is (Status.NOT_APPLICABLE if n in DATASTORE_CHECKS else Status.PASSED)
        for n, s in others.items()
    ), others


def test_agent_log_elsewhere_is_named() -> None:
    facts = broken("agent.log", {"exists": False})
    facts["agent"]["open_logs"] = ["/tmp/trove-guestagent.log"]
    v = verdicts(facts, has_agent=True)
    assert v["agent-log"][0] is Status.FAILED
    assert "it logs to /tmp/trove-guestagent.log" in v["agent-log"][1]


def test_agent_waits_on_docker_and_sudo() -> None:
    v = verdicts(broken("docker_active", "inactive"), has_agent=True)
    assert v["agent"] == (Status.NOT_RUN, "not checked: docker failed")
    assert v["image-loader"][0] is Status.NOT_RUN
    v = verdicts(broken("user.sudo", {"rc": 1, "out": "password required"}), has_agent=True)
    assert v["agent"] == (Status.NOT_RUN, "not checked: default-user failed")


def test_declared_keys_are_allowed() -> None:
    facts = broken("private_keys", [{"path": "/home/ubuntu/.ssh/id_ed25519", "mtime": 1.0}])
    assert verdicts(facts)["private-keys"][0] is Status.FAILED
    assert (
        verdicts(facts, declared_keys=("/home/ubuntu/.ssh/id_ed25519",))["private-keys"][0]
        is Status.PASSED
    )


def test_reports(tmp_path: Path) -> None:
    results = judge(
        None, expectations(), booted=False, boot_detail="no kernel", no_facts_detail="x"
    )
    report = Report("img.qcow2", "metadata", results, None)
    assert not report.passed
    report.write_json(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["passed"] is False and doc["boot_seconds"] is None
    assert [c["name"] for c in doc["checks"]] == list(CHECK_NAMES)
    assert set(doc["checks"][0]) >= {"name", "passed", "detail", "seconds"}
    agent = next(c for c in doc["checks"] if c["name"] == "agent-rpc")
    assert agent["passed"] is None and agent["status"] == "not-applicable"
    report.write_junit(tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert (
        suite is not None
        and suite.get("failures") == "1"
        and suite.get("tests") == str(len(CHECK_NAMES))
    )
    assert "FAILED" in report.table()


def root_facts(fs: float, part: float, others: float, disk: float) -> dict[str, Any]:
    facts = copy.deepcopy(GOOD_FACTS)
    gib = 2**30
    facts["root"] = {
        "fs_bytes": int(fs * gib),
        "part_bytes": int(part * gib),
        "partitions_bytes": int((part + others) * gib),
        "disk_bytes": int(disk * gib),
        "source": "/dev/vda1",
    }
    return facts


@pytest.mark.parametrize(
    ("fs", "part", "others", "disk", "status", "cause"),
    [
        # noble's shape, grown: p1 fills what /boot (1 GiB), the ESP and BIOS boot leave.
        (4.74, 4.89, 1.11, 6.0, Status.PASSED, "other partitions 1.11 GiB"),
        # jammy's shape, grown: ESP 106 MiB and BIOS boot 4 MiB beside the root.
        (5.70, 5.89, 0.11, 6.0, Status.PASSED, "unallocated 0.00 GiB"),
        # noble's shape as published, never grown: 2.2 GiB root on a 6 GiB disk.
        (2.10, 2.2, 1.11, 6.0, Status.FAILED, "the partition was not grown"),
        # growpart ran but resize2fs did not.
        (2.10, 4.89, 1.11, 6.0, Status.FAILED, "the filesystem was not resized"),
    ],
)
def test_root_grown_judges_the_root_partition_not_the_whole_disk(
    fs: float, part: float, others: float, disk: float, status: Status, cause: str
) -> None:
    verdict = verdicts(root_facts(fs, part, others, disk))["root-grown"]
    assert verdict[0] is status
    assert cause in verdict[1]


def test_root_grown_without_partition_facts_cannot_pass() -> None:
    facts = copy.deepcopy(GOOD_FACTS)
    del facts["root"]["part_bytes"]
    assert verdicts(facts)["root-grown"][0] is Status.FAILED
