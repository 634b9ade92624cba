"""Judge the facts a booted guest reported, check by check, as Trove would need them.

Check names are stable (README lists them). A check that could not be judged because another
one failed says so in its detail, and names that check in `depends_on`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from assembler.boottest.instance import InjectedFile

AGENT_LOG = "/var/log/trove/trove-guestagent.log"
# Grown root: the filesystem within this much of its partition (ext4 metadata), the disk's
# unallocated space within this much of the disk (partition table, alignment).
GROW_SLACK = 0.05


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not-applicable"
    NOT_RUN = "not-run"  # another check it depends on failed


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str
    seconds: float = 0.0
    depends_on: str | None = None

    @property
    def passed(self) -> bool | None:
        """True/False; None where the check does not apply to this image."""
        if self.status is Status.NOT_APPLICABLE:
            return None
        return self.status is Status.PASSED


@dataclass(frozen=True)
class Expectations:
    datasource: str  # "OpenStack" or "ConfigDrive"
    guest_username: str
    hostname: str
    public_key: str
    files: tuple[InjectedFile, ...]
    declared_keys: tuple[str, ...] = ()  # private keys the image's manifest declares
    has_agent: bool = False
    boot_time_slack: float = 0.0
    # A datastore run (--datastore): the image ref the agent starts, and the manifest digest
    # the harness pushed to its registry (None: no registry, the image must be embedded).
    datastore_image: str | None = None
    pushed_digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Verdict = tuple[bool, str]
Judge = Callable[[dict[str, Any], Expectations], Verdict]


def _datasource(f: dict[str, Any], e: Expectations) -> Verdict:
    ds = str(f.get("cloud_init_result", {}).get("v1", {}).get("datasource") or "")
    ok = f"DataSource{e.datasource}" in ds
    return ok, f"cloud-init used {ds or 'no datasource'}; expected {e.datasource}"


def _cloud_init(f: dict[str, Any], e: Expectations) -> Verdict:
    v1 = f.get("cloud_init_result", {}).get("v1", {})
    errors = v1.get("errors")
    status = f.get("cloud_init_status", {})
    done = "status: done" in status.get("out", "")
    if errors is None:
        return False, "no /run/cloud-init/result.json: cloud-init did not finish"
    if errors or not done:
        first = status.get("out", "").strip().splitlines()[:1]
        return False, f"errors: {errors or first}"
    return True, "finished without errors"


def _hostname(f: dict[str, Any], e: Expectations) -> Verdict:
    name = f.get("hostname", "")
    return name == e.hostname, f"hostname {name!r}, metadata says {e.hostname!r}"


def _default_user(f: dict[str, Any], e: Expectations) -> Verdict:
    u = f.get("user", {})
    name = e.guest_username
    if not u.get("exists"):
        return False, f"no user {name}"
    problems = []
    if "sudo" not in u.get("groups", []):
        problems.append("not in group sudo")
    if u.get("sudo", {}).get("rc") != 0:
        problems.append(f"passwordless sudo fails: {u.get('sudo', {}).get('out', '').strip()}")
    key_body = e.public_key.split()[1] if len(e.public_key.split()) > 1 else e.public_key
    if key_body not in u.get("authorized_keys", ""):
        problems.append("the metadata key did not reach its authorized_keys")
    if problems:
        return False, f"{name}: " + "; ".join(problems)
    return True, f"{name} got the metadata key and passwordless sudo"


def _docker(f: dict[str, Any], e: Expectations) -> Verdict:
    active, enabled = f.get("docker_active"), f.get("docker_enabled")
    info = f.get("docker_info", {})
    if active != "active":
        return False, f"docker.service is {active} ({enabled})"
    if info.get("rc") != 0:
        return False, f"docker info failed: {info.get('out', '').strip()[:200]}"
    return True, f"docker {info.get('out', '').strip()} active"


def _injected(f: dict[str, Any], e: Expectations) -> Verdict:
    seen = f.get("injected", {})
    problems = []
    for want in e.files:
        got = seen.get(want.path, {})
        if not got.get("exists"):
            problems.append(f"{want.path} missing")
            continue
        owner = f"{got.get('owner')}:{got.get('group')}"
        if owner != want.owner or got.get("mode") != want.mode:
            problems.append(
                f"{want.path} is {owner} {got.get('mode')}, not {want.owner} {want.mode}"
            )
        if got.get("sha256") != hashlib.sha256(want.content.encode()).hexdigest():
            problems.append(f"{want.path} content differs")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(e.files)} files with the right owner, mode and content"


def _root_grown(f: dict[str, Any], e: Expectations) -> Verdict:
    root = f.get("root", {})
    fs, part = root.get("fs_bytes"), root.get("part_bytes")
    disk, parts = root.get("disk_bytes"), root.get("partitions_bytes")
    if not fs or not part or not disk or not parts:
        return False, f"cannot size the root filesystem: {root}"
    gib = 2**30
    free = disk - parts
    shape = (
        f"root filesystem {fs / gib:.2f} GiB in a {part / gib:.2f} GiB partition; "
        f"other partitions {(parts - part) / gib:.2f} GiB, unallocated {free / gib:.2f} GiB "
        f"of a {disk / gib:.2f} GiB disk"
    )
    if free > disk * GROW_SLACK:
        return False, shape + ": the partition was not grown"
    if fs < part * (1 - GROW_SLACK):
        return False, shape + ": the filesystem was not resized"
    return True, shape


def _network_isolation(f: dict[str, Any], e: Expectations) -> Verdict:
    net = f.get("network")
    if not isinstance(net, dict) or not net.get("unreachable"):
        return False, "the guest did not probe its network"

    def name(t: dict[str, Any]) -> str:
        return f"{t['addr']}:{t['port']}"

    leaks = [name(t) for t in net["unreachable"] if t.get("open")]
    closed = [f"{name(t)} ({t.get('error')})" for t in net.get("reachable", []) if not t["open"]]
    if leaks:
        return False, "reached what nothing should forward: " + ", ".join(leaks)
    if closed:
        return False, "forwarded services did not answer: " + ", ".join(closed)
    return True, (
        f"{len(net['unreachable'])} unforwarded addresses unreachable "
        f"({', '.join(name(t) for t in net['unreachable'])}); "
        f"{len(net.get('reachable', []))} forwarded services answered"
    )


def _private_keys(f: dict[str, Any], e: Expectations) -> Verdict:
    boot_time = float(f.get("boot_time", 0))
    shipped = []
    for k in f.get("private_keys", []):
        path, mtime = k["path"], float(k["mtime"])
        # sshd's host keys are made by the instance at first boot; older ones came in the image.
        if path.startswith("/etc/ssh/ssh_host_") and mtime >= boot_time - e.boot_time_slack:
            continue
        if path in e.declared_keys:
            continue
        shipped.append(path)
    if shipped:
        return False, "undeclared private keys in the image: " + ", ".join(sorted(shipped))
    declared = ", ".join(e.declared_keys) or "none"
    return True, f"no private key but those declared ({declared})"


def _build_secrets(f: dict[str, Any], e: Expectations) -> Verdict:
    left = f.get("leftovers", [])
    if left:
        return False, "build-time leftovers: " + ", ".join(left)
    return True, "no build-time files or secrets left"


def _agent(f: dict[str, Any], e: Expectations) -> Verdict:
    a = f.get("agent", {})
    unit = a.get("unit", {})
    state = f"{unit.get('ActiveState')}/{unit.get('SubState')}"
    if unit.get("ActiveState") != "active" or a.get("enabled") != "enabled":
        journal = " | ".join(a.get("journal", "").strip().splitlines()[-2:])
        return False, f"guest-agent.service is {state}, {a.get('enabled')}: {journal}"
    return True, f"guest-agent.service {state}, enabled"


def _agent_log(f: dict[str, Any], e: Expectations) -> Verdict:
    log = f.get("agent", {}).get("log", {})
    if log.get("exists") and not log.get("size"):
        return False, f"{AGENT_LOG} is empty: the agent opened it but never wrote to it"
    if not log.get("exists"):
        elsewhere = [p for p in f.get("agent", {}).get("open_logs", []) if p != AGENT_LOG]
        where = f"; it logs to {', '.join(elsewhere)}" if elsewhere else ""
        return False, f"no {AGENT_LOG} (where logrotate expects it){where}"
    if log.get("owner") != e.guest_username:
        return False, f"the agent's log is owned by {log.get('owner')}, not {e.guest_username}"
    return True, f"{AGENT_LOG}, {log.get('size')} bytes"


def _image_loader(f: dict[str, Any], e: Expectations) -> Verdict:
    a = f.get("agent", {})
    unit = a.get("image_loader", {})
    ok = unit.get("Result") == "success" and unit.get("ExecMainStatus") == "0"
    lines = a.get("image_loader_log", "").strip().splitlines()
    # What it loaded at this boot (embedded archives, with their time), then its last words.
    loaded = [line for line in lines[:-2] if "loaded in" in line]
    tail = " | ".join([*loaded, *lines[-2:]])
    return ok, f"trove-image-loader {unit.get('ActiveState')} ({unit.get('Result')}): {tail}"


def _hostnic(f: dict[str, Any], e: Expectations) -> Verdict:
    a = f.get("agent", {})
    ok = a.get("hostnic_socket", {}).get("ActiveState") == "active" and a.get("hostnic_listening")
    return bool(ok), (
        "docker-hostnic.socket listening on /run/docker/plugins/docker-hostnic.sock"
        if ok
        else f"docker-hostnic.socket is {a.get('hostnic_socket', {}).get('ActiveState')}"
    )


def _datastore_image(f: dict[str, Any], e: Expectations) -> Verdict:
    """The datastore image is in the guest's docker before the agent needs it: pulled from
    the harness's registry (its digest is the one pushed) or already in the image."""
    found = f.get("agent", {}).get("datastore_image", {})
    ref = e.datastore_image
    if not found.get("present"):
        tail = " | ".join(f.get("agent", {}).get("image_loader_log", "").strip().splitlines()[-2:])
        return False, f"{ref} is not in the guest's docker: {tail or found.get('error')}"
    digests = [str(d) for d in found.get("repo_digests") or []]
    short = str(found.get("id", ""))[:19]
    if e.pushed_digest and any(d.endswith("@" + e.pushed_digest) for d in digests):
        return True, f"{ref} pulled from the registry ({e.pushed_digest[:19]}), image {short}"
    if digests:
        # Pulled, but not what the harness pushed: another registry served it.
        return (
            False,
            f"{ref} came from {', '.join(digests)}, not the image pushed ({e.pushed_digest})",
        )
    if e.pushed_digest:
        return (
            True,
            f"{ref} was already in the image (embedded, {short}); the registry was not used",
        )
    return True, f"{ref} was already in the image (embedded, {short}), no registry reachable"


# Judged on the host from calls over the message bus; the harness adds them to the facts.
BUS_KEYS = {
    "agent-rpc": "rpc",
    "agent-volume": "volume",
    "datastore-prepare": "prepare",
    "datastore-query": "query",
}


def _bus_answer(f: dict[str, Any], name: str) -> dict[str, Any]:
    answer = f.get("bus", {}).get(BUS_KEYS[name])
    return answer if isinstance(answer, dict) else {}


def _bus(name: str) -> Judge:
    def judge_bus(f: dict[str, Any], e: Expectations) -> Verdict:
        answer = _bus_answer(f, name)
        if not answer:
            return False, "no message bus was given to the boot test"
        return bool(answer["ok"]), str(answer["detail"])

    return judge_bus


class Needs(StrEnum):
    """What an image or run must have for a check to apply at all."""

    NOTHING = "nothing"
    AGENT = "agent"  # the image's manifest lists an agent
    DATASTORE = "datastore"  # the run creates a database (--datastore)


N, A, D = Needs.NOTHING, Needs.AGENT, Needs.DATASTORE
# (name, judge, depends_on, needs). Order is the report's order.
CHECKS: tuple[tuple[str, Judge, tuple[str, ...], Needs], ...] = (
    ("datasource", _datasource, ("boot",), N),
    ("cloud-init", _cloud_init, ("datasource",), N),
    ("hostname", _hostname, ("datasource",), N),
    ("default-user", _default_user, ("datasource",), N),
    ("injected-files", _injected, ("datasource",), N),
    ("docker", _docker, ("boot",), N),
    ("root-grown", _root_grown, ("boot",), N),
    ("network-isolation", _network_isolation, ("boot",), N),
    ("private-keys", _private_keys, ("boot",), N),
    ("build-secrets", _build_secrets, ("boot",), N),
    ("hostnic", _hostnic, ("boot",), A),
    ("image-loader", _image_loader, ("docker", "injected-files"), A),
    ("agent", _agent, ("docker", "default-user", "injected-files"), A),
    ("agent-log", _agent_log, ("agent",), A),
    ("agent-rpc", _bus("agent-rpc"), ("agent",), A),
    ("agent-volume", _bus("agent-volume"), ("agent-rpc",), A),
    ("datastore-image", _datastore_image, ("docker", "injected-files"), D),
    ("datastore-prepare", _bus("datastore-prepare"), ("agent-rpc", "datastore-image"), D),
    ("datastore-query", _bus("datastore-query"), ("datastore-prepare",), D),
)
CHECK_NAMES = ("boot", *(name for name, _, _, _ in CHECKS))


def judge(
    facts: dict[str, Any] | None,
    expect: Expectations,
    *,
    booted: bool,
    boot_detail: str,
    no_facts_detail: str,
) -> list[CheckResult]:
    """Every check's result. Without facts (the gatherer arrives in user data, so no datasource
    means no facts) `datasource` fails with what the console showed and the rest wait on it."""
    seconds = (facts or {}).get("seconds", {})
    results = [CheckResult("boot", Status.PASSED if booted else Status.FAILED, boot_detail)]
    failed = {"boot"} if not booted else set()
    for name, fn, depends, needs in CHECKS:
        if needs is not Needs.NOTHING and not expect.has_agent:
            results.append(
                CheckResult(name, Status.NOT_APPLICABLE, "the image's manifest lists no agent")
            )
            continue
        if needs is Needs.DATASTORE and expect.datastore_image is None:
            detail = "no database created in this run (--datastore)"
            results.append(CheckResult(name, Status.NOT_APPLICABLE, detail))
            continue
        blockers = [d for d in depends if d in failed]
        if not blockers and facts is None and name != "datasource":
            blockers = ["datasource"]
        if blockers:
            detail = f"not checked: {', '.join(blockers)} failed"
            results.append(CheckResult(name, Status.NOT_RUN, detail, 0.0, blockers[0]))
            failed.add(name)
            continue
        if facts is None:
            results.append(CheckResult(name, Status.FAILED, no_facts_detail))
            failed.add(name)
            continue
        ok, detail = fn(facts, expect)
        status = Status.PASSED if ok else Status.FAILED
        spent = float(_bus_answer(facts, name).get("seconds", 0.0) if name in BUS_KEYS
                      else seconds.get(name, 0.0))  # fmt: skip
        results.append(CheckResult(name, status, detail, spent))
        if not ok:
            failed.add(name)
    return results
