"""The boot test: boot an image as Nova would for Trove, then judge what the guest reports."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from assembler import accel as accel_mod
from assembler.accel import Accel
from assembler.agent.devkeys import KeyPair
from assembler.boottest import datastore
from assembler.boottest.checks import Expectations, judge
from assembler.boottest.configdrive import build_config_drive
from assembler.boottest.controller import Controller, unpack_trove_release
from assembler.boottest.datastore_launch import (
    DatastoreOptions,
    Launch,
    open_launch,
)
from assembler.boottest.instance import InjectedFile, Instance
from assembler.boottest.metadata import MetadataService
from assembler.boottest.rabbit import Broker
from assembler.boottest.report import Report
from assembler.boottest.vm import METADATA_ADDR, Forward, MachineSpec, Timeouts, boot, console_tail
from assembler.errors import AssemblerError, UsageError
from assembler.images import inspect_disk
from assembler.layouts import Firmware
from assembler.manifest import manifest_path
from assembler.run import run

log = logging.getLogger(__name__)

# The root disk is bigger than the image, as a flavor's disk is, so growing it is tested.
EXTRA_ROOT_BYTES = 1024**3
VOLUME_BYTES = 1024**3


class Mode(StrEnum):
    METADATA = "metadata"  # Trove's default since Yoga (use_nova_server_config_drive=False)
    CONFIG_DRIVE = "config-drive"


DATASOURCE_OF = {Mode.METADATA: "OpenStack", Mode.CONFIG_DRIVE: "ConfigDrive"}


@dataclass(frozen=True)
class BootTestOptions:
    image: Path
    mode: Mode = Mode.METADATA
    accel: Accel = Accel.AUTO
    guest_username: str | None = None  # default: the manifest's, else ubuntu
    artifacts: Path | None = None  # where failure evidence goes; default beside the report
    timeouts: Timeouts = field(default_factory=Timeouts)
    cpus: int = 2
    datastore_manager: str = "mysql"
    datastore_version: str = "8.0"
    # Named in the injected config, trove-image-loader pulls it at boot: no registry is
    # reachable from a test guest, so by default none is named (the loader then has nothing to do).
    docker_image: str | None = None
    # The message bus the agent talks to: a private broker the harness starts (the default
    # for an image with an agent), or an operator's own URL as the guest sees it.
    rabbit: bool | None = None
    transport_url: str | None = None
    # Dev mode: the trove tree the harness's controller serves (default: the manifest's release).
    controller_tree: Path | None = None
    # A database created through Trove's prepare, and what it needs (registry, image, faults).
    datastore: DatastoreOptions | None = None
    memory_mb: int = 1024  # the guest's RAM, sent to prepare as the flavor's
    firmware: Firmware = Firmware.BIOS  # as Glance's hw_firmware_type asks Nova for
    # A test of the network-isolation check itself: one probed address is forwarded too (to
    # a harness service on 127.0.0.1, so nothing else is reached), and the check must fail.
    leak_forward: bool = False


# Where the guest reaches the harness's broker: inside its user network, as QEMU requires.
BUS_ADDR, BUS_PORT = "169.254.0.100", 5672
UNUSED_BUS = f"rabbit://guest:guest@{BUS_ADDR}:{BUS_PORT}/"
# Where a dev-mode guest reaches the harness's controller sshd.
CONTROLLER_ADDR, CONTROLLER_PORT = "169.254.0.101", 22
# What the guest must not reach (QEMU's restrict=on): QEMU's own host address, an address of the
# guest's network that nothing forwards, one outside it (TEST-NET-1, RFC 5737).
UNFORWARDED: tuple[tuple[str, int], ...] = (
    ("169.254.0.2", 22),
    ("169.254.0.103", 80),
    ("192.0.2.1", 80),
)


def read_manifest(image: Path) -> dict[str, Any]:
    try:
        doc = json.loads(manifest_path(image).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise UsageError(f"manifest of {image} is not JSON: {exc}") from exc
    return doc if isinstance(doc, dict) else {}


def injected_files(
    inst_uuid: str,
    user: str,
    opts: BootTestOptions,
    transport_url: str,
    launch: Launch | None = None,
) -> tuple[InjectedFile, ...]:
    """What Trove's taskmanager injects at launch (get_injected_files), with our options."""
    owner = f"{user}:root"
    manager = launch.manager if launch else opts.datastore_manager
    version = launch.version if launch else opts.datastore_version
    guest_info = (
        "[DEFAULT]\n"
        f"guest_id={inst_uuid}\n"
        f"datastore_manager={manager}\n"
        f"datastore_version={version}\n"
        f"tenant_id={'0' * 32}\n" + ("network_isolation=False\n" if launch else "")
        # The taskmanager's default is True (ports only on the management network).
    )
    agent_conf = (
        "[DEFAULT]\n"
        f"transport_url = {transport_url}\n"
        "control_exchange = trove\n"
        "log_dir = /var/log/trove/\n"
        "log_file = trove-guestagent.log\n"
    )
    if launch is not None:
        # Emulation starts a database far slower than the 180 s Trove waits by default.
        agent_conf += f"state_change_wait_time = {launch.opts.wait:.0f}\n" + launch.agent_conf()
    else:
        agent_conf += f"\n[{manager}]\n" + (
            f"docker_image = {opts.docker_image}\n" if opts.docker_image else ""
        )
    return (
        InjectedFile("/etc/trove/conf.d/guest_info.conf", guest_info, owner, "0640"),
        InjectedFile("/etc/trove/conf.d/trove-guestagent.conf", agent_conf, owner, "0640"),
        *(launch.injected(owner) if launch else ()),
    )


def run_boot_test(opts: BootTestOptions, report_path: Path | None = None) -> Report:
    disk_image = inspect_disk(opts.image)
    fmt, size = disk_image.format, disk_image.virtual_size
    manifest = read_manifest(opts.image)
    inputs = manifest.get("inputs", {})
    user = opts.guest_username or inputs.get("guest_username") or "ubuntu"
    chosen = accel_mod.resolve(opts.accel)
    with tempfile.TemporaryDirectory(prefix="trove-boot-test-") as tmp:
        work = Path(tmp)
        disk, volume = work / "disk.qcow2", work / "volume.qcow2"
        # The image under test is never written: the guest boots from an overlay.
        run([
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", opts.image.absolute(),
            disk, str(size + EXTRA_ROOT_BYTES),
        ])  # fmt: skip
        run(["qemu-img", "create", "-q", "-f", "qcow2", volume, str(VOLUME_BYTES)])
        # The instance's keypair: only its public half is served; nothing logs in with it.
        public_key = KeyPair.generate("trove-boot-test").public
        has_agent = bool(manifest.get("agent"))
        with contextlib.ExitStack() as stack:
            forwards: list[Forward] = []
            transport_url = opts.transport_url or UNUSED_BUS
            broker: Broker | None = None
            if opts.rabbit or (opts.rabbit is None and has_agent):
                broker = stack.enter_context(Broker())
                forwards.append(broker.forward(BUS_ADDR, BUS_PORT))
                transport_url = opts.transport_url or broker.url_from_guest(BUS_ADDR, BUS_PORT)
            launch = open_launch(opts.datastore, stack) if opts.datastore else None
            if launch is not None:
                forwards += launch.forwards
            inst_uuid = str(uuid.uuid4())
            files = injected_files(inst_uuid, user, opts, transport_url, launch)
            agent = manifest.get("agent") or {}
            if agent.get("mode") == "dev":
                ctl = stack.enter_context(_dev_controller(manifest, opts, work))
                forwards.append(Forward(CONTROLLER_ADDR, CONTROLLER_PORT, ctl.port))
                # As Trove injects it when it has a controller_address.
                conf = (
                    f"CONTROLLER={CONTROLLER_ADDR}\nCONTROLLER_SSH_PORT={CONTROLLER_PORT}\n"
                    f"PATH_TROVE={ctl.trove_path}\n"
                )
                files += (InjectedFile("/etc/trove/controller.conf", conf, f"{user}:root", "0644"),)
            inst = Instance(
                user, public_key, files, uuid=inst_uuid, has_agent=has_agent,
                datastore_image=launch.ref if launch else None,
            )  # fmt: skip
            expect = Expectations(
                datasource=DATASOURCE_OF[opts.mode],
                guest_username=user,
                hostname=inst.hostname,
                public_key=public_key,
                files=inst.files,
                declared_keys=tuple(manifest.get("private_keys", [])),
                has_agent=has_agent,
                boot_time_slack=5.0,
                datastore_image=launch.ref if launch else None,
                pushed_digest=launch.pushed_digest if launch else None,
            )
            # The guest probes its network: every forward answers, nothing else does.
            metadata_fwd = [(METADATA_ADDR, 80)] if opts.mode is Mode.METADATA else []
            inst = replace(
                inst,
                reachable=(*((f.guest_addr, f.guest_port) for f in forwards), *metadata_fwd),
                unreachable=UNFORWARDED,
            )
            config_drive: Path | None = None
            metadata: MetadataService | None = None
            if opts.mode is Mode.CONFIG_DRIVE:
                config_drive = work / "config-drive.iso"
                build_config_drive(inst, config_drive)
            else:
                metadata = stack.enter_context(MetadataService(inst))
                forwards.append(Forward(METADATA_ADDR, 80, metadata.port))
            if opts.leak_forward:
                if not forwards:
                    raise UsageError("--leak-forward needs a service to forward to")
                addr, port = UNFORWARDED[1]
                forwards.append(Forward(addr, port, forwards[0].host_port))
            artifacts = work / "run"
            spec = MachineSpec(
                disk=disk, volume=volume, config_drive=config_drive, forwards=tuple(forwards),
                accel=chosen, uuid=inst.uuid, mac=inst.mac, workdir=artifacts, cpus=opts.cpus,
                memory_mb=opts.memory_mb, published=(launch.published,) if launch else (),
                firmware=opts.firmware,
            )  # fmt: skip
            bus_calls = None
            if has_agent and broker is not None:
                bus_calls = partial(_call_agent, broker.host_url, inst_uuid, opts, launch, work)
            requests = (lambda: len(metadata.requests)) if metadata else None
            result = boot(spec, opts.timeouts, bus_calls, requests)
        booted = result.kernel_seen or result.facts is not None
        boot_detail = (
            "the guest booted" + (" to its login prompt" if result.login_seen else "")
            if booted
            else f"no kernel output on the console ({result.error}): {console_tail(spec)}"
        )
        # What most often explains missing facts: the datasource, or systemd dropping a job.
        evidence = ("ordering cycle", "deleted to break", "ds-identify", "Cloud-init v.")
        cloud_init_lines = console_tail(spec, 4, evidence)
        no_facts = f"no facts: {result.error}; console: {cloud_init_lines or console_tail(spec)}"
        checks = judge(
            result.facts, expect, booted=booted, boot_detail=boot_detail, no_facts_detail=no_facts
        )
        bus = (result.facts or {}).get("bus", {})
        if launch is not None and not bus.get("prepare", {}).get("ok", True):
            bus["prepare"]["detail"] += _agent_errors(spec.facts_log)
        report = Report(
            image=str(opts.image),
            mode=str(opts.mode),
            firmware=str(opts.firmware),
            checks=checks,
            boot_seconds=result.boot_seconds,
            metadata_requests=list(metadata.requests) if metadata else [],
            phases={**result.phases, **_prepare_phases(bus)},
            stopped_because=result.error,
            bus=_bus_summary(bus),
        )
        if not report.passed or result.error:
            report.artifacts = _keep_artifacts(artifacts, opts, report_path)
    return report


def _agent_errors(facts_log: Path, count: int = 2) -> str:
    """The agent's last ERROR lines, as the gatherer followed its log on the facts port."""
    errors = []
    for line in facts_log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            text = str(json.loads(line).get("trove_agent_log", ""))
            if " ERROR " in text:
                errors.append(text.split(" ERROR ", 1)[1])
    return f"; the agent logged: {' | '.join(errors[-count:])}" if errors else ""


def _prepare_phases(bus: dict[str, Any]) -> dict[str, float]:
    """When the conductor first heard each status the agent sent (seconds since QEMU's start)."""
    phases: dict[str, float] = {}
    for heard in bus.get("prepare", {}).get("statuses", []):
        phases.setdefault(str(heard["status"]), round(float(heard["seconds"]), 1))
    return phases


def _bus_summary(bus: dict[str, Any]) -> dict[str, Any]:
    """The taskmanager's calls for the report; of the conductor's notifications only their
    names (their payloads describe the instance, and are not the report's business)."""
    summary = {k: v for k, v in bus.items() if isinstance(v, dict)}
    if "prepare" in summary:
        prepare = dict(summary["prepare"])
        prepare["notifications"] = [
            n.get("method", n.get("event_type", "?")) if isinstance(n, dict) else str(n)
            for n in prepare.get("notifications", [])
        ]
        summary["prepare"] = prepare
    return summary


def _dev_controller(manifest: dict[str, Any], opts: BootTestOptions, work: Path) -> Controller:
    agent = manifest["agent"]
    public = agent.get("dev_public_key")
    if not public:
        raise UsageError("the dev-mode image's manifest has no dev_public_key for the controller")
    tree = opts.controller_tree or unpack_trove_release(agent["version"], work / "controller")
    user = manifest.get("inputs", {}).get("host_scp_username")
    return Controller(tree, public, user)


# Beyond state_change_wait_time: the volume's format and mount, the image's start, the
# database's users, all under emulation.
PREPARE_MARGIN = 300.0
QUERY_TIMEOUT = 90.0


def _call_agent(
    url: str,
    guest_id: str,
    opts: BootTestOptions,
    launch: Launch | None,
    work: Path,
    started: float,
    facts: dict[str, Any],
) -> dict[str, Any]:
    """Play Trove's taskmanager on the bus (rpc_ping, a read-only call on the volume, and for a
    datastore run prepare, heard back as the conductor) from a child process; time.monotonic()
    is system-wide, so QEMU's start time carries over. Then, as a client would, the database."""
    if facts.get("agent", {}).get("unit", {}).get("ActiveState") != "active":
        return {}  # the agent check fails on its own; waiting for its answer is pointless
    manager = launch.manager if launch else opts.datastore_manager
    mount_point = datastore.mount_point(manager)
    argv = [sys.executable, "-m", "assembler.boottest.agent_rpc", url, guest_id,
            str(opts.timeouts.agent), repr(started), mount_point,
            str(VOLUME_BYTES / 1024**3)]  # fmt: skip
    limit = opts.timeouts.agent + 60
    image_there = bool(facts.get("agent", {}).get("datastore_image", {}).get("present"))
    if launch is not None and image_there:
        # Without its image prepare cannot start a database (datastore-prepare is then not
        # judged): casting it would only spend the whole wait.
        spec = work / "prepare.json"
        deadline = launch.opts.wait + PREPARE_MARGIN
        doc = {
            "build": launch.prepare_args(opts.memory_mb, guest_id),
            "deadline": deadline,
            "manager": launch.manager,
            "query": launch.query_args(QUERY_TIMEOUT),
        }
        spec.write_text(json.dumps(doc))
        spec.chmod(0o600)  # it carries the database user's password
        argv.append(str(spec))
        limit += deadline
    try:
        out = run(argv, timeout=limit)
        answers: dict[str, Any] = dict(json.loads(out.strip().splitlines()[-1]))
    except (AssemblerError, ValueError, IndexError) as exc:
        detail = f"the taskmanager calls failed: {exc}"
        return {"rpc": {"ok": False, "detail": detail, "seconds": 0.0}}
    return answers


def _keep_artifacts(
    run_dir: Path, opts: BootTestOptions, report_path: Path | None
) -> dict[str, str]:
    """Failure evidence (console, facts port, QMP events, screendump) beside the report."""
    if opts.artifacts is not None:
        dest = opts.artifacts
    elif report_path is not None:
        dest = report_path.with_name(report_path.name + ".artifacts")
    else:
        dest = Path.cwd() / f"boot-test-{opts.image.name}.artifacts"
    dest.mkdir(parents=True, exist_ok=True)
    kept = {}
    for name in ("console.log", "facts.log", "qmp-events.json", "screen.png", "qemu.stderr"):
        src = run_dir / name
        if src.exists():
            shutil.copy2(src, dest / name)
            kept[name] = str(dest / name)
    return kept
