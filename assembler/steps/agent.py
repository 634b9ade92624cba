"""The Trove guest agent in the image, production or dev mode, as trovestack's element lays it out:
the venv at /opt/guest-agent-venv, the guest-agent unit (runs as the guest user, reads
/etc/trove/conf.d), trove-image-loader, the docker-hostnic plugin socket, logrotate.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from assembler.agent.devkeys import KeyPair
from assembler.agent.payload import AgentPayload, prepare_agent
from assembler.agent.venv import VENV_PREFIX, tar_tree
from assembler.config import BuildConfig
from assembler.facts import Facts, Prepared
from assembler.guest import ids, sh, write
from assembler.resources import render, resource
from assembler.run import run

UNITS = "/etc/systemd/system"
# Enabled at boot, as trovestack enables them.
ENABLED = ("guest-agent.service", "docker-hostnic.socket", "trove-image-loader.service")
SCRIPTS = {  # overlay file -> where it goes (root:root 0755)
    "trove-image-loader": "/usr/local/sbin/trove-image-loader",
    "fix-default-route": "/usr/local/sbin/fix-default-route",
}
DEV_SCRIPTS = {"trove-dev-fetch": "/usr/local/sbin/trove-dev-fetch"}


# Where the compressed venv waits in the guest while the guest's tar unpacks it.
STAGED_TAR = "/var/tmp/assembler-agent.tar.zst"


def prepare(cfg: BuildConfig, facts: Facts) -> Prepared:
    """On the host, while the appliance starts: the venv laid out, to upload."""
    payload = prepare_agent(cfg, facts.scratch, facts.wheelhouse)
    return Prepared(facts={"payload": payload}, record={"agent": payload.manifest()})


def install_venv(g: Any, cfg: BuildConfig, payload: AgentPayload) -> None:
    """Upload the venv laid out on the host in one tar, owned by the guest user as trovestack's.

    The appliance's file channel is the bottleneck under emulation (265 MiB of venv took 25 s
    through tar_in), so the tar goes over compressed with zstd (65 MiB, 1 s) when the guest
    has zstd to unpack it (Ubuntu and Debian cloud images do); 12 s in all, measured.
    """
    uid, gid = ids(g, cfg.guest_username, "root")
    with tempfile.TemporaryDirectory(prefix="agent-tar-") as tmp:
        tar = Path(tmp) / "agent.tar"
        tar_tree(payload.staging, tar, payload.subtrees, uid=uid, gid=gid)
        if g.is_file("/usr/bin/zstd") and shutil.which("zstd"):
            packed = Path(tmp) / "agent.tar.zst"
            run(["zstd", "-q", "-T0", "-3", "--rm", tar, "-o", packed])
            g.upload(str(packed), STAGED_TAR)
            sh(
                g,
                "agent-venv",
                # pipefail: a zstd failure must fail the step even when tar exits 0.
                f"bash -o pipefail -c 'zstd -q -d -c {STAGED_TAR} | "
                f"tar -x --numeric-owner -f - -C /' && rm -f {STAGED_TAR}",
            )
        else:
            g.tar_in(str(tar), "/", xattrs=False)
    # Proves the venv's interpreter link resolves in this guest (a wrong Python would not).
    sh(g, "agent-venv", f"{VENV_PREFIX}/bin/python3 -c 'import sys; print(sys.version)'")


def services(g: Any, cfg: BuildConfig, payload: AgentPayload) -> None:
    user = cfg.guest_username
    for overlay, path in {**SCRIPTS, **(DEV_SCRIPTS if cfg.dev_mode else {})}.items():
        write(g, path, resource(f"overlays/agent/{overlay}").read_text(), mode=0o755)
    if cfg.dev_mode:
        unit = render(
            "overlays/agent/guest-agent-dev.service",
            user=user,
            host_user=cfg.host_scp_username,
            trove_path=cfg.agent.controller_trove_path,
            agent_version=payload.wheelhouse.agent_version,
        )
        plugin = f"{VENV_PREFIX}/bin/python /home/{user}/trove/contrib/trove-network-driver"
    else:
        unit = render("overlays/agent/guest-agent.service", user=user)
        plugin = "/usr/local/bin/trove-docker-plugin"
        g.ln_sf(f"{VENV_PREFIX}/bin/trove-guestagent", "/usr/local/bin/guest-agent")
        g.ln_sf(f"{VENV_PREFIX}/bin/trove-docker-plugin", "/usr/local/bin/trove-docker-plugin")
    write(g, f"{UNITS}/guest-agent.service", unit)
    write(
        g,
        f"{UNITS}/docker-hostnic.service",
        render("overlays/agent/docker-hostnic.service", plugin=plugin),
    )
    for name in ("docker-hostnic.socket", "trove-image-loader.service"):
        write(g, f"{UNITS}/{name}", resource(f"overlays/agent/{name}").read_text())
    write(
        g,
        "/etc/logrotate.d/guest-agent",
        resource("overlays/agent/guest-agent.logrotate").read_text(),
    )
    enabled = list(ENABLED)
    if cfg.dev_mode and cfg.agent.sync_logs:
        for name in ("guest-log-collection.service", "guest-log-collection.timer"):
            text = render(f"overlays/agent/{name}", user=user, host_user=cfg.host_scp_username)
            write(g, f"{UNITS}/{name}", text)
        enabled.append("guest-log-collection.timer")
    sh(g, "agent-services", "systemctl enable " + " ".join(enabled))


def controller(g: Any, cfg: BuildConfig) -> None:
    """What the guest knows of its controller: dev mode's address, the management gateway.

    Trove injects /etc/trove/controller.conf at launch too (when it has a controller_address),
    which then replaces this one.
    """
    uid, gid = ids(g, cfg.guest_username, "root")
    lines = []
    if cfg.dev_mode and cfg.agent.controller_host:
        lines.append(f"CONTROLLER={cfg.agent.controller_host}")
    if cfg.agent.mgmt_gateway:
        lines.append(f"TROVE_MGMT_GATEWAY={cfg.agent.mgmt_gateway}")
    if lines:
        write(g, "/etc/trove/controller.conf", "\n".join(lines) + "\n")
        g.chown(uid, gid, "/etc/trove/controller.conf")


def dev_keys(g: Any, cfg: BuildConfig, dev_key: KeyPair | None) -> None:
    """The guest user's key pair for the controller, and its public half to log in with."""
    if dev_key is None:
        return  # a production image never holds a private key
    pair = dev_key
    user = cfg.guest_username
    ssh = f"/home/{user}/.ssh"
    write(g, f"{ssh}/id_ed25519", pair.private, mode=0o600, owner=user)
    write(g, f"{ssh}/id_ed25519.pub", pair.public + "\n", mode=0o644, owner=user)
    existing = g.cat(f"{ssh}/authorized_keys") if g.exists(f"{ssh}/authorized_keys") else ""
    if pair.public not in existing:
        write(g, f"{ssh}/authorized_keys", existing + pair.public + "\n", mode=0o600, owner=user)
    g.chmod(0o700, ssh)
    uid, gid = ids(g, user)
    g.chown(uid, gid, ssh)
