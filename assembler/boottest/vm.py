"""One QEMU guest, driven through QMP (qemu.qmp): start, wait for facts, power down, quit.

No libvirt: QEMU is started here with user networking restricted to the harness's own
forwards, so the guest can reach nothing but services the harness runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qemu.qmp import EventListener, QMPClient, QMPError

from assembler import cancel
from assembler.accel import Accel
from assembler.boottest.progress import KERNEL_BANNER, Limits, Snapshot, Watch
from assembler.layouts import Firmware
from assembler.run import die_with_parent

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
# The guest's user network: the metadata address must lie inside it for QEMU to forward it.
GUEST_NET = "169.254.0.0/16"
GUEST_HOST = "169.254.0.2"
DHCP_START = "169.254.0.15"
METADATA_ADDR = "169.254.169.254"
# UEFI: Debian's OVMF without Secure Boot (the 4 MiB flash layout); each guest gets its own
# copy of the variable store, as Nova gives each instance.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def ovmf_drives(uefi_vars: Path) -> list[str]:
    """QEMU options for UEFI: OVMF's code read-only, and a guest's own copy of its variables."""
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={uefi_vars}",
    ]  # fmt: skip


@dataclass(frozen=True)
class Forward:
    """A guest address:port reaching a harness service on 127.0.0.1, one socat per connection.

    `host` is another address only when an operator names a service of their own (a registry)
    on the command line; the tests' guests reach nothing but loopback."""

    guest_addr: str
    guest_port: int
    host_port: int
    host: str = "127.0.0.1"

    def option(self) -> str:
        return (
            f"guestfwd=tcp:{self.guest_addr}:{self.guest_port}"
            f"-cmd:socat STDIO TCP:{self.host}:{self.host_port}"
        )


@dataclass(frozen=True)
class Published:
    """A guest port the host reaches on 127.0.0.1 only (the database, as a client would)."""

    host_port: int
    guest_port: int

    def option(self) -> str:
        return f"hostfwd=tcp:127.0.0.1:{self.host_port}-:{self.guest_port}"


@dataclass(frozen=True)
class Timeouts:
    """Limits, not schedules: the guest is waited for while it makes progress (see progress.py).

    A good image takes ~100 s to its facts under TCG on a fast machine and ~210 s on one 2.7x
    slower at emulation; the ceiling leaves room beyond that, and a broken image stops at once
    when the console shows it, or after `stall` seconds of silence.
    """

    qmp: float = 30.0
    ceiling: float = 1200.0  # QEMU's start to the facts, at most
    stall: float = 240.0  # no console output, heartbeat, metadata request or event this long
    agent: float = 240.0  # after the facts: the agent's first rpc_ping answer


@dataclass(frozen=True)
class MachineSpec:
    disk: Path  # qcow2 overlay of the image under test
    volume: Path  # blank second disk, as Cinder's volume (/dev/vdb)
    config_drive: Path | None
    forwards: tuple[Forward, ...]
    accel: Accel
    uuid: str
    mac: str
    workdir: Path
    memory_mb: int = 1024
    cpus: int = 2
    published: tuple[Published, ...] = ()
    firmware: Firmware = Firmware.BIOS

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def facts_log(self) -> Path:
        return self.workdir / "facts.log"

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def uefi_vars(self) -> Path:
        return self.workdir / "OVMF_VARS.fd"

    def firmware_argv(self) -> list[str]:
        """SeaBIOS is QEMU's own default; UEFI is OVMF on the two pflash units."""
        return [] if self.firmware is Firmware.BIOS else ovmf_drives(self.uefi_vars)

    def argv(self) -> list[str]:
        netdev = ",".join(
            [
                "user,id=n0,restrict=on",
                f"net={GUEST_NET},host={GUEST_HOST},dhcpstart={DHCP_START}",
                *(f.option() for f in self.forwards),
                *(p.option() for p in self.published),
            ]
        )
        argv = [
            QEMU, "-name", "trove-boot-test", "-machine", f"pc,accel={self.accel}",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-display", "none", "-vga", "std", "-no-shutdown", "-uuid", self.uuid,
            # What Nova tells the guest about itself; cloud-init's ds-identify looks for it.
            "-smbios",
            f"type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,"
            f"serial={self.uuid},uuid={self.uuid}",
            "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-drive", f"file={self.volume},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
            "-chardev", f"file,id=console,path={self.console_log}", "-serial", "chardev:console",
            "-chardev", f"file,id=facts,path={self.facts_log}", "-serial", "chardev:facts",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            *self.firmware_argv(),
        ]  # fmt: skip
        if self.config_drive is not None:
            # Nova attaches the config drive as a CD-ROM, never virtio: the agent formats vdb.
            argv += ["-drive", f"file={self.config_drive},media=cdrom,if=ide,readonly=on"]
        return argv


# Called once the guest's facts are in, while it still runs, with QEMU's start time
# (time.monotonic()) and the facts; what it returns joins the facts under "bus".
WhileRunning = Callable[[float, dict[str, Any]], dict[str, Any]]
# A count that grows while the guest shows signs of life outside its serial ports (requests to
# the harness's metadata service).
Progress = Callable[[], int]


@dataclass
class BootResult:
    facts: dict[str, Any] | None
    boot_seconds: float | None
    login_seen: bool
    kernel_seen: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    screendump: Path | None = None
    # Seconds from QEMU's start to each phase seen: qmp, kernel, login, cloud-init, gatherer,
    # facts, bus (the taskmanager calls done), stopped.
    phases: dict[str, float] = field(default_factory=dict)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def _connect(
    qmp: QMPClient, socket: Path, proc: subprocess.Popen[bytes], limit: float
) -> None:
    deadline = time.monotonic() + limit
    while True:
        if proc.poll() is not None:
            raise QMPError(f"QEMU exited with {proc.returncode} before QMP was up")
        if not socket.exists():  # QEMU has not created it yet; connecting would only log noise
            if time.monotonic() > deadline:
                raise QMPError(f"QEMU made no QMP socket within {limit:.0f} s")
            await asyncio.sleep(0.2)
            continue
        try:
            await qmp.connect(str(socket))
            return
        except (OSError, QMPError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _boot(
    spec: MachineSpec,
    timeouts: Timeouts,
    while_running: WhileRunning | None,
    progress: Progress | None,
    shared: dict[str, Any],
) -> BootResult:
    spec.workdir.mkdir(parents=True, exist_ok=True)
    if spec.firmware is Firmware.UEFI:
        shutil.copyfile(OVMF_VARS, spec.uefi_vars)
    stderr = (spec.workdir / "qemu.stderr").open("wb")
    log.info("starting QEMU (%s)", spec.accel)
    log.debug("qemu: %s", " ".join(spec.argv()))
    started = time.monotonic()
    proc = subprocess.Popen(
        spec.argv(),
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        preexec_fn=die_with_parent(),
    )
    shared.update(proc=proc, started=started)
    with cancel.child(proc.pid):
        return await _drive(proc, spec, timeouts, while_running, progress, started, stderr, shared)


async def _drive(
    proc: subprocess.Popen[bytes],
    spec: MachineSpec,
    timeouts: Timeouts,
    while_running: WhileRunning | None,
    progress: Progress | None,
    started: float,
    stderr: IO[bytes],
    shared: dict[str, Any],
) -> BootResult:
    qmp = QMPClient("trove-boot-test")
    events: list[dict[str, Any]] = []
    everything = EventListener()
    result = BootResult(None, None, False, False, events)
    try:
        with qmp.listen(everything):
            await _connect(qmp, spec.qmp_socket, proc, timeouts.qmp)
            status = await qmp.execute("query-status")
            log.debug("QMP query-status: %s", status)
            result.phases["qmp"] = round(time.monotonic() - started, 1)
            watch = Watch(Limits(timeouts.ceiling, timeouts.stall))
            while watch.verdict is None:
                await asyncio.sleep(1.0)
                _drain(everything, events)
                if proc.poll() is not None:
                    cancel.check()
                    result.error = f"QEMU exited with {proc.returncode}"
                    break
                if any(e.get("event") == "SHUTDOWN" for e in events):
                    result.error = "the guest shut itself down"
                    break
                activity = len(events) + (progress() if progress else 0)
                activity += _io_of(proc.pid)
                now = time.monotonic() - started
                snap = Snapshot(now, _read(spec.console_log), _read(spec.facts_log), activity)
                watch.feed(snap)
            result.phases.update(watch.phases)
            result.kernel_seen = KERNEL_BANNER in _read(spec.console_log)
            result.login_seen = "login" in watch.phases
            if watch.verdict == "facts" and watch.facts is not None:
                result.facts = watch.facts
                result.boot_seconds = time.monotonic() - started
                if while_running is not None:
                    result.facts["bus"] = await _in_thread(while_running, started, watch.facts)
                    result.phases["bus"] = round(time.monotonic() - started, 1)
            elif watch.verdict is not None:
                result.error = watch.verdict
            # All the report needs is in: from here on, boot() may stop QEMU itself.
            shared["complete"] = (result, time.monotonic())
            shared["stage"] = "quit"
            if proc.poll() is None:
                if result.facts is None:
                    result.screendump = await _screendump(qmp, spec.workdir / "screen.png")
                # No orderly shutdown: the guest's disks are overlays thrown away with it.
                with contextlib.suppress(QMPError):
                    await qmp.execute("quit")
            _drain(everything, events)
    except QMPError as exc:
        result.error = f"QMP: {exc}"
    finally:
        # Whatever happened above, the report can be written from here on, and QEMU goes
        # first: a client whose peer is gone cannot wait on it.
        shared.setdefault("complete", (result, time.monotonic()))
        _stop(proc)
        # After `quit` QEMU closes the socket under the client, which reports it on disconnect.
        qmp_log = logging.getLogger("qemu.qmp")
        level, qmp_log.level = qmp_log.level, logging.CRITICAL  # its "end-of-file" is expected
        shared["stage"] = "disconnect"
        with contextlib.suppress(QMPError, EOFError, OSError):
            await qmp.disconnect()
        qmp_log.setLevel(level)
        _stop(proc)
        stderr.close()
        (spec.workdir / "qmp-events.json").write_text(json.dumps(events, indent=1))
        result.phases["stopped"] = round(time.monotonic() - started, 1)
    return result


def _io_of(pid: int) -> int:
    """Bytes QEMU has read from and written to storage (its disks): a sign of life when the guest
    says nothing else for minutes (docker unpacking a datastore image under emulation). Read
    from /proc, not asked over QMP, so a slow or lost QMP answer can never hold the loop."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    # Not rchar/wchar: QEMU's own event loop reads and writes eventfds all the time.
    return int(fields.get("read_bytes", 0)) + int(fields.get("write_bytes", 0))


async def _in_thread(fn: WhileRunning, started: float, facts: dict[str, Any]) -> dict[str, Any]:
    """Run blocking calls (the message bus) beside the loop while the guest keeps running.

    A thread of our own, not the loop's default executor: the oslo.messaging stack those calls
    load must not be able to hold up the loop's shutdown.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn(started, facts)
        except Exception as exc:  # handed back to the loop's thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="boot-test-bus", daemon=True)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.5)
    if "error" in outcome:
        # A fault of the harness's own calls fails the checks that needed them; the boot,
        # its other facts and the report stand.
        exc = outcome["error"]
        log.debug("the bus calls failed", exc_info=exc)
        detail = f"the harness's calls failed: {type(exc).__name__}: {exc}"
        return {"rpc": {"ok": False, "detail": detail, "seconds": 0.0}}
    return dict(outcome["value"])


def _drain(listener: EventListener, into: list[dict[str, Any]]) -> None:
    into.extend(dict(event) for event in listener.clear())


async def _screendump(qmp: QMPClient, path: Path) -> Path | None:
    try:
        await qmp.execute("screendump", {"filename": str(path), "format": "png"})
    except QMPError as exc:
        log.debug("screendump failed: %s", exc)
        return None
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Once the facts and the bus calls are in, QEMU's end may take this long before the harness
# stops it itself (a QMP exchange that never completes must not hold the report back).
LET_GO_SECONDS = 30.0


def boot(
    spec: MachineSpec,
    timeouts: Timeouts,
    while_running: WhileRunning | None = None,
    progress: Progress | None = None,
) -> BootResult:
    """The boot, its QMP loop in a thread of its own: once the result is complete, a loop that
    does not let go (seen after long bus calls, with no cause found yet) is left behind and
    QEMU stopped here, so the report is always written."""
    shared: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            shared["result"] = asyncio.run(_boot(spec, timeouts, while_running, progress, shared))
        except BaseException as exc:  # handed back to the caller's thread
            shared["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="boot-qmp", daemon=True).start()
    while not done.wait(1.0):
        complete = shared.get("complete")
        if complete is not None and time.monotonic() - complete[1] > LET_GO_SECONDS:
            result: BootResult = complete[0]
            log.warning("QMP did not let go of QEMU (at %s); stopping it", shared.get("stage"))
            _stop(shared["proc"])
            result.phases["stopped"] = round(time.monotonic() - shared["started"], 1)
            return result
    if "error" in shared:
        raise shared["error"]
    return shared["result"]  # type: ignore[no-any-return]


def console_tail(spec: MachineSpec, lines: int = 5, grep: Sequence[str] = ()) -> str:
    text = _read(spec.console_log).splitlines()
    if grep:
        text = [line for line in text if any(g in line for g in grep)]
    return " | ".join(line.strip() for line in text[-lines:])
