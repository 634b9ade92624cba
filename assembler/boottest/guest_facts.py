#!/usr/bin/python3
"""Runs INSIDE the guest under test (stdlib only, Python >= 3.9): gathers facts, judges nothing.

The harness ships this file in the instance's user data, with the key detector it shares with
the build (as FACTS_DIR/assembler/keyscan.py, so the import below is the same on host and
guest), and a systemd unit runs it once cloud-init's final stage is over. It writes one JSON
line to the second serial port, which only this program uses, so console noise can never split
it. Judging happens on the host (assembler/boottest/checks.py), where it can be unit-tested.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from assembler import keyscan

# Leftovers of an image build that must never reach an instance.
BUILD_LEFTOVERS = (
    "/usr/sbin/policy-rc.d",
    "/etc/dpkg/dpkg.cfg.d/assembler-unsafe-io",
    "/var/tmp/assembler-apt",
    "/root/.bash_history",
    "/etc/apt/apt.conf.d/99assembler-proxy",
)


def cmd(*argv: str) -> dict[str, Any]:
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"rc": -1, "out": str(exc)}
    return {"rc": proc.returncode, "out": proc.stdout.decode(errors="replace")[-4000:]}


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    return doc if isinstance(doc, dict) else {"error": "not a JSON object"}


def stat_file(path: str) -> dict[str, Any]:
    try:
        st = os.lstat(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError as exc:
        return {"exists": False, "error": str(exc)}
    return {
        "exists": True,
        "mode": "%04o" % (st.st_mode & 0o7777),
        "owner": pwd.getpwuid(st.st_uid).pw_name,
        "group": grp.getgrgid(st.st_gid).gr_name,
        "sha256": digest,
    }


def user_facts(name: str) -> dict[str, Any]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return {"exists": False}
    groups = sorted(g.gr_name for g in grp.getgrall() if name in g.gr_mem)
    keys_path = os.path.join(pw.pw_dir, ".ssh", "authorized_keys")
    try:
        with open(keys_path) as f:
            keys = f.read()
    except OSError:
        keys = ""
    return {
        "exists": True,
        "shell": pw.pw_shell,
        "home": pw.pw_dir,
        "groups": groups,
        "authorized_keys": keys,
        # What sudo itself says, as the user would get it, without a password prompt.
        "sudo": cmd("sudo", "-n", "-u", name, "sudo", "-n", "true"),
    }


def private_keys(root: str = "/") -> list[dict[str, Any]]:
    """Every file under root (its filesystem only, any size) that holds a private key, by its
    path in the guest.

    find and grep pick the candidates: walking ~40,000 files in Python took 51 s under slow
    emulation. grep looks for the detector's own fixed strings, which escaped and quoted keys
    contain too; the shared detector (assembler/keyscan.py) then decides on the few it lists.
    """
    patterns = keyscan.grep_patterns()
    try:
        finder = subprocess.Popen(
            ["find", root, "-xdev", "-type", "f", "-print0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # The C locale: grep then matches bytes, much faster than decoding UTF-8 it won't need.
        grep = subprocess.run(
            ["xargs", "-0", "-r", "grep", "-lsZF", *patterns],
            stdin=finder.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=900,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        finder.wait(60)
    except (OSError, subprocess.SubprocessError):
        return private_keys_walk(root)
    found = []
    for raw in grep.stdout.split(b"\0"):
        if raw:
            hit = _key_in(os.fsdecode(raw), root)
            if hit is not None:
                found.append(hit)
    return found


def _key_in(path: str, root: str) -> dict[str, Any] | None:
    if keyscan.scan_file(path) is None:
        return None
    try:
        mtime = os.lstat(path).st_mtime
    except OSError:
        return None
    return {"path": os.path.join("/", os.path.relpath(path, root)), "mtime": mtime}


def private_keys_walk(root: str = "/") -> list[dict[str, Any]]:
    """The same scan in Python alone, where find or grep cannot run."""
    found = []
    root_dev = os.stat(root).st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == root_dev]
        for name in filenames:
            hit = _key_in(os.path.join(dirpath, name), root)
            if hit is not None:
                found.append(hit)
    return found


def reach(addr: str, port: int, timeout: float = 4.0) -> dict[str, Any]:
    """Whether a TCP connection to addr:port opens from inside the guest, and why not."""
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return {"addr": addr, "port": port, "open": True}
    except OSError as exc:
        return {"addr": addr, "port": port, "open": False, "error": str(exc) or type(exc).__name__}


def network(targets: dict[str, list[list[Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The harness's forwards (they must open) and addresses nothing forwards (they must not)."""
    return {kind: [reach(str(a), int(p)) for a, p in targets.get(kind, [])] for kind in targets}


def root_size() -> dict[str, Any]:
    """The root filesystem, its partition and every partition of its disk, in bytes.

    A grown root fills its partition and leaves the disk no free space; the disk's other
    partitions (an ESP, noble's /boot) are not the root's to take.
    """
    st = os.statvfs("/")
    source = cmd("findmnt", "-n", "-o", "SOURCE", "/")["out"].strip()
    disk = "/dev/" + cmd("lsblk", "-n", "-o", "PKNAME", source)["out"].strip()

    def sizes(*argv: str) -> list[int]:
        out = cmd("lsblk", "-n", "-b", *argv)["out"].split()
        return [int(v) for v in out if v.isdigit()]

    disk_bytes = sizes("-d", "-o", "SIZE", disk)
    part_bytes = sizes("-d", "-o", "SIZE", source)
    # -l -o SIZE,TYPE lists the disk and its partitions: keep the partitions' sizes.
    rows = cmd("lsblk", "-n", "-b", "-l", "-o", "SIZE,TYPE", disk)["out"].splitlines()
    partitions = [int(r.split()[0]) for r in rows if r.split()[1:] == ["part"]]
    return {
        "fs_bytes": st.f_blocks * st.f_frsize,
        "source": source,
        "disk_bytes": disk_bytes[0] if disk_bytes else None,
        "part_bytes": part_bytes[0] if part_bytes else None,
        "partitions_bytes": sum(partitions) if partitions else None,
    }


AGENT_LOG = "/var/log/trove/trove-guestagent.log"
# The real agent writes its first log line ~50 s after boot on a fast machine, ~2.7x later on a
# slow one; the wait ends as soon as the outcome is known, this is only its ceiling.
AGENT_SETTLE_SECONDS = 400.0
HEARTBEAT_SECONDS = 10.0
_port: Any = None  # the facts port, opened by main()
_last_beat = 0.0


def heartbeat(section: str, force: bool = False) -> None:
    """One progress line on the facts port, so the harness knows the gatherer is still at work."""
    global _last_beat
    now = time.monotonic()
    if _port is None or (not force and now - _last_beat < HEARTBEAT_SECONDS):
        return
    _last_beat = now
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    _port.write(json.dumps({"trove_boot_progress": 1, "section": section, "uptime": uptime}))
    _port.write("\n")
    _port.flush()


def open_logs(unit: str) -> list[str]:
    """The *.log files the unit's processes hold open: where the agent really logs."""
    group = cmd("systemctl", "show", unit, "-p", "ControlGroup", "--value")["out"].strip()
    try:
        with open(f"/sys/fs/cgroup{group}/cgroup.procs") as f:
            pids = f.read().split()
    except OSError:
        return []
    found = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.endswith(".log"):
                found.add(target)
    return sorted(found)


def unit_state(unit: str) -> dict[str, str]:
    props = "ActiveState,SubState,Result,ExecMainStatus,NRestarts"
    out = cmd("systemctl", "show", unit, "-p", props)["out"]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def docker_image(ref: str) -> dict[str, Any]:
    """What the guest's docker holds under ref: RepoDigests name the registry it came from (an
    image loaded from an archive has none)."""
    out = cmd("docker", "image", "inspect", ref, "--format", "{{json .}}")
    if out["rc"] != 0:
        return {"ref": ref, "present": False, "error": out["out"].strip()[-300:]}
    try:
        doc = json.loads(out["out"])
    except ValueError:
        return {"ref": ref, "present": False, "error": out["out"][-300:]}
    return {
        "ref": ref,
        "present": True,
        "id": doc.get("Id"),
        "repo_digests": doc.get("RepoDigests") or [],
        "size": doc.get("Size"),
    }


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def agent_facts(ready: bool = True, datastore_image: str | None = None) -> dict[str, Any]:
    """Wait (bounded) for the agent to start and write its log, then describe its surroundings.

    Not ready (docker down, no sudo, Trove's config missing: the agent's own checks then wait
    on those): describe it as it is, without waiting for what cannot come."""
    deadline = time.monotonic() + (AGENT_SETTLE_SECONDS if ready else 0.0)
    logs: list[str] = []
    while time.monotonic() < deadline:
        heartbeat("agent")
        state = unit_state("guest-agent.service")
        active = state.get("ActiveState") == "active"
        # Python's FileHandler creates the file at start and writes its first line later: an
        # empty file is not yet a verdict (a run failed on exactly that gap).
        if active and _size(AGENT_LOG) > 0:
            break
        # Disabled, given up on, failing before it could log, or logging somewhere else:
        # waiting longer will not change the verdict.
        if cmd("systemctl", "is-enabled", "guest-agent.service")["out"].strip() != "enabled":
            break
        if state.get("ActiveState") == "failed":
            break
        if state.get("Result") not in ("success", None) and int(state.get("NRestarts", "0")) > 2:
            break
        logs = open_logs("guest-agent.service") if active else []
        if [p for p in logs if p != AGENT_LOG]:
            break
        time.sleep(3)
    log = stat_file(AGENT_LOG)
    log.pop("sha256", None)
    log["size"] = _size(AGENT_LOG)
    return {
        "unit": unit_state("guest-agent.service"),
        "enabled": cmd("systemctl", "is-enabled", "guest-agent.service")["out"].strip(),
        "journal": cmd("journalctl", "-u", "guest-agent.service", "-n", "8", "--no-pager", "-q")[
            "out"
        ],
        "log": log,
        "open_logs": logs or open_logs("guest-agent.service"),
        "image_loader": unit_state("trove-image-loader.service"),
        "image_loader_log": cmd(
            "journalctl", "-u", "trove-image-loader.service", "-n", "12", "--no-pager", "-q"
        )["out"],
        "hostnic_socket": unit_state("docker-hostnic.socket"),
        "hostnic_listening": os.path.exists("/run/docker/plugins/docker-hostnic.sock"),
        **({"datastore_image": docker_image(datastore_image)} if datastore_image else {}),
    }


def main() -> None:
    global _port
    expect = read_json(sys.argv[1])
    _port = open(expect.get("port", "/dev/ttyS1"), "w")  # noqa: SIM115 (kept for the run)
    heartbeat("start", force=True)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    facts: dict[str, Any] = {"uptime": uptime, "boot_time": time.time() - uptime}
    seconds: dict[str, float] = {}

    def timed(check: str, **gather: Callable[[], Any]) -> None:
        heartbeat(check, force=True)
        started = time.monotonic()
        for key, fn in gather.items():
            facts[key] = fn()
        seconds[check] = round(time.monotonic() - started, 3)

    timed(
        "cloud-init",
        cloud_init_status=lambda: cmd("cloud-init", "status", "--long"),
        cloud_init_result=lambda: read_json("/run/cloud-init/result.json"),
    )
    timed("hostname", hostname=lambda: cmd("hostname")["out"].strip())
    timed("default-user", user=lambda: user_facts(expect.get("user", "")))
    timed(
        "docker",
        docker_active=lambda: cmd("systemctl", "is-active", "docker.service")["out"].strip(),
        docker_enabled=lambda: cmd("systemctl", "is-enabled", "docker.service")["out"].strip(),
        docker_info=lambda: cmd("docker", "info", "--format", "{{.ServerVersion}}"),
    )
    timed("injected-files", injected=lambda: {p: stat_file(p) for p in expect.get("injected", [])})
    if expect.get("agent"):
        ready = (
            facts["docker_active"] == "active"
            and facts["user"].get("sudo", {}).get("rc") == 0
            and all(f.get("exists") for f in facts["injected"].values())
        )
        timed("agent", agent=lambda: agent_facts(ready, expect.get("datastore_image")))
    timed("root-grown", root=root_size)
    if expect.get("network"):
        timed("network-isolation", network=lambda: network(expect["network"]))
    timed("private-keys", private_keys=private_keys)
    timed("build-secrets", leftovers=lambda: [p for p in BUILD_LEFTOVERS if os.path.lexists(p)])
    facts["seconds"] = seconds
    line = json.dumps({"trove_boot_facts": 1, "facts": facts}, sort_keys=True)
    _port.write(line + "\n")
    _port.flush()
    if expect.get("follow_agent_log") and os.path.exists(AGENT_LOG):
        follow(AGENT_LOG, _port)  # until the harness stops the guest
    _port.close()


def follow(path: str, port: Any) -> None:
    """The agent's log, line by line, on the facts port while the harness talks to the agent:
    what explains a prepare that fails (the host keeps the port's log as evidence)."""
    with open(path, errors="replace") as f:
        while True:
            line = f.readline()
            if not line:
                time.sleep(1)
                continue
            port.write(json.dumps({"trove_agent_log": line.rstrip()[:400]}) + "\n")
            port.flush()


if __name__ == "__main__":
    main()
