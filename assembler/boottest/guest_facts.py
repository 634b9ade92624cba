#!/usr/bin/python3
"""Runs INSIDE the guest under test (stdlib only, Python >= 3.9): gathers facts, judges nothing.

The harness ships this file in the instance's user data and a systemd unit runs it once
cloud-init's final stage is over. It writes one JSON line to the second serial port, which only
this program uses, so console noise can never split it. Judging happens on the host
(assembler/boottest/checks.py), where it can be unit-tested.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

MAX_KEY_SCAN_SIZE = 64 * 1024
# A whole PEM block at the start of a line: code and docs that merely name the markers, or
# quote an example key indented, are not keys lying in the image.
PEM_PRIVATE_KEY = re.compile(
    rb"^-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\n"
    rb"(?:[A-Za-z0-9+/=:,. -]*\r?\n)+?"
    rb"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    re.MULTILINE,
)
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


def private_keys() -> list[dict[str, Any]]:
    """Every small file under / (this filesystem only) that holds a private key."""
    found = []
    root_dev = os.stat("/").st_dev
    for dirpath, dirnames, filenames in os.walk("/"):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == root_dev]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                if st.st_size > MAX_KEY_SCAN_SIZE:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if b"PRIVATE KEY-----" in data and PEM_PRIVATE_KEY.search(data):
                found.append({"path": path, "mtime": st.st_mtime})
    return found


def root_size() -> dict[str, Any]:
    st = os.statvfs("/")
    source = cmd("findmnt", "-n", "-o", "SOURCE", "/")["out"].strip()
    disk = cmd(
        "lsblk",
        "-n",
        "-d",
        "-b",
        "-o",
        "SIZE",
        "/dev/" + cmd("lsblk", "-n", "-o", "PKNAME", source)["out"].strip(),
    )["out"].strip()
    return {
        "fs_bytes": st.f_blocks * st.f_frsize,
        "source": source,
        "disk_bytes": int(disk) if disk.isdigit() else None,
    }


AGENT_LOG = "/var/log/trove/trove-guestagent.log"
AGENT_SETTLE_SECONDS = 150.0  # the real agent writes its first log line ~50 s after boot


def unit_state(unit: str) -> dict[str, str]:
    props = "ActiveState,SubState,Result,ExecMainStatus,NRestarts"
    out = cmd("systemctl", "show", unit, "-p", props)["out"]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def agent_facts() -> dict[str, Any]:
    """Wait (bounded) for the agent to start and write its log, then describe its surroundings."""
    deadline = time.monotonic() + AGENT_SETTLE_SECONDS
    while time.monotonic() < deadline:
        state = unit_state("guest-agent.service")
        if state.get("ActiveState") == "active" and os.path.exists(AGENT_LOG):
            break
        # Disabled, or failing before it could log: no point waiting for it.
        if cmd("systemctl", "is-enabled", "guest-agent.service")["out"].strip() != "enabled":
            break
        if state.get("Result") not in ("success", None) and int(state.get("NRestarts", "0")) > 2:
            break
        time.sleep(3)
    log = stat_file(AGENT_LOG)
    log.pop("sha256", None)
    try:
        log["size"] = os.path.getsize(AGENT_LOG)
    except OSError:
        log["size"] = 0
    return {
        "unit": unit_state("guest-agent.service"),
        "enabled": cmd("systemctl", "is-enabled", "guest-agent.service")["out"].strip(),
        "journal": cmd("journalctl", "-u", "guest-agent.service", "-n", "8", "--no-pager", "-q")[
            "out"
        ],
        "log": log,
        "image_loader": unit_state("trove-image-loader.service"),
        "image_loader_log": cmd(
            "journalctl", "-u", "trove-image-loader.service", "-n", "6", "--no-pager", "-q"
        )["out"],
        "hostnic_socket": unit_state("docker-hostnic.socket"),
        "hostnic_listening": os.path.exists("/run/docker/plugins/docker-hostnic.sock"),
    }


def main() -> None:
    expect = read_json(sys.argv[1])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    facts: dict[str, Any] = {"uptime": uptime, "boot_time": time.time() - uptime}
    seconds: dict[str, float] = {}

    def timed(check: str, **gather: Callable[[], Any]) -> None:
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
    if expect.get("agent"):
        timed("agent", agent=agent_facts)
    timed("injected-files", injected=lambda: {p: stat_file(p) for p in expect.get("injected", [])})
    timed("root-grown", root=root_size)
    timed("private-keys", private_keys=private_keys)
    timed("build-secrets", leftovers=lambda: [p for p in BUILD_LEFTOVERS if os.path.lexists(p)])
    facts["seconds"] = seconds
    line = json.dumps({"trove_boot_facts": 1, "facts": facts}, sort_keys=True)
    with open(expect.get("port", "/dev/ttyS1"), "w") as port:
        port.write(line + "\n")
        port.flush()


if __name__ == "__main__":
    main()
