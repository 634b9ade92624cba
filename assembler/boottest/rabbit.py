"""A private RabbitMQ broker on 127.0.0.1, the message bus a booted guest's agent talks to.

Debian's rabbitmq-server, started with every path, name and port of its own (nothing under
/etc/rabbitmq or /var/lib/rabbitmq is read or written), so it never meets a system broker or
another test run. Nothing it starts may listen beyond loopback: the AMQP listener is bound to
127.0.0.1, Erlang distribution is pinned to 127.0.0.1 for every Erlang node started from our
environment, and the epmd it registers with is ours, run in the foreground on 127.0.0.1 and a
private port, so it can be stopped with the broker (an epmd Erlang starts itself would
daemonize and outlive us, on every interface unless told otherwise). If we die without
unwinding, the kernel stops both (setpriv --pdeathsig).

The guest reaches the broker through a QEMU guestfwd (see vm.Forward): each connection is a
socat to 127.0.0.1, so RabbitMQ's default `guest` user, which it accepts from loopback only,
works unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from assembler import cancel
from assembler.boottest.vm import Forward
from assembler.errors import AssemblerError, UsageError
from assembler.run import die_with_parent

log = logging.getLogger(__name__)

# Debian's script proper: /usr/sbin/rabbitmq-server is a wrapper that `su`s to the rabbitmq
# user and sends output to /var/log/rabbitmq; we drop privileges ourselves and keep the output.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = "epmd"
SETPRIV = "setpriv"  # util-linux
BROKER_USER = "rabbitmq"
LOOPBACK = "127.0.0.1"
# Measured here: ~6 s from start to the first AMQP handshake; TCG guests share the 2 cores.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# RabbitMQ's defaults for the `guest` user, accepted from loopback only.
USER = "guest"
PASSWORD = "guest"
# Where the boot test's guest finds the bus (a guestfwd address inside its user network).
GUEST_ADDR = "169.254.0.100"
GUEST_PORT = 5672
# The first bytes of AMQP 0-9-1; the broker answers with Connection.Start (class 10, method 10).
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
# epmd's NAMES_REQ: a real request, so probing it leaves no "partial packet" complaint.
EPMD_NAMES_REQ = b"\x00\x01n"
# "<timestamp> [error] <0.657.0>     reason: ..." in the broker's log: keep what follows the pid.
ERROR_LINE = re.compile(r"\[error\] <[^>]*>\s*(.*)")
MAX_LINE = 300  # Erlang error terms run to kilobytes; a one-line error keeps their start


class BrokerError(AssemblerError):
    """The broker did not start, or died; the message carries the tail of its log."""


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on loopback (held open together so none repeats).

    A port can be taken by someone else between this and the broker's bind: the broker then
    fails to start and says so in its log, which BrokerError reports.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((LOOPBACK, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def amqp_ready(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> bool:
    """True when the broker answers the AMQP protocol header with Connection.Start.

    RabbitMQ opens its listener late in boot, but a bare TCP accept could still come from
    something else on a reused port; the handshake proves it is a broker.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(AMQP_HEADER)
            data = b""
            while len(data) < 11:  # frame header (7 bytes) + class id + method id
                chunk = s.recv(64)
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    frame_type, channel = data[0], struct.unpack(">H", data[1:3])[0]
    class_id, method_id = struct.unpack(">HH", data[7:11])
    return frame_type == 1 and channel == 0 and (class_id, method_id) == (10, 10)


@dataclass(frozen=True)
class _Layout:
    """The broker's private tree, all under one temporary directory."""

    root: Path

    @property
    def home(self) -> Path:  # Erlang writes its cookie to $HOME/.erlang.cookie
        return self.root / "home"

    @property
    def mnesia(self) -> Path:
        return self.root / "mnesia"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def config(self) -> Path:  # new-style rabbitmq.conf (the .conf extension says so)
        return self.root / "rabbitmq.conf"

    @property
    def env_file(self) -> Path:  # stands in for /etc/rabbitmq/rabbitmq-env.conf, which we skip
        return self.root / "rabbitmq-env.conf"

    @property
    def plugins_file(self) -> Path:  # no plugins: the management UI would listen on 15672
        return self.root / "enabled_plugins"

    @property
    def feature_flags(self) -> Path:  # must not exist beforehand: an empty one kills the broker
        return self.mnesia / "feature_flags"

    @property
    def output(self) -> Path:  # the start script's and Erlang's own stdout and stderr
        return self.logs / "startup.log"


def _drop_to() -> pwd.struct_passwd | None:
    """The user to run as: `rabbitmq` when we are root (as Debian's wrapper does), else us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(BROKER_USER)
    except KeyError:
        return None


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def summarize_failure(rabbit_log: list[str], output: list[str], lines: int = 4) -> str:
    """The few lines that say why a broker failed, on one line.

    Erlang's own last words ("init terminating in do_boot ...") name the cause when boot
    fails; otherwise the broker log's last errors; otherwise the end of the console output.
    """
    boot = [line for line in output if line.startswith("init terminating in do_boot")]
    errors = [m[1] for line in rabbit_log if (m := ERROR_LINE.search(line)) and m[1]]
    found = boot[-1:] or errors[-lines:] or output[-lines:]
    text = " | ".join(line[:MAX_LINE] for line in found) or "no log output"
    if any("eaddrinuse" in line for line in (*rabbit_log, *output)):
        text = f"a port it needs is in use: {text}"
    return text


class Broker:
    """A running private broker; `with Broker() as b:` starts it and stops it on exit."""

    def __init__(
        self,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
        keep_logs: Path | None = None,
    ) -> None:
        self._wanted_port = port
        self.start_timeout = start_timeout
        self.keep_logs = keep_logs  # where the broker's logs are copied when it stops
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.nodename = f"rabbit-{secrets.token_hex(4)}@localhost"
        self.start_seconds: float | None = None
        self._layout: _Layout | None = None
        self._broker: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._registered = contextlib.ExitStack()

    # URLs as oslo.messaging's transport_url takes them.
    @property
    def host_url(self) -> str:
        return f"rabbit://{USER}:{PASSWORD}@{LOOPBACK}:{self.port}/"

    def url_from_guest(self, guest_addr: str = GUEST_ADDR, guest_port: int = GUEST_PORT) -> str:
        return f"rabbit://{USER}:{PASSWORD}@{guest_addr}:{guest_port}/"

    def forward(self, guest_addr: str = GUEST_ADDR, guest_port: int = GUEST_PORT) -> Forward:
        """The QEMU forward that makes guest_addr:guest_port reach this broker."""
        return Forward(guest_addr, guest_port, self.port)

    @property
    def pids(self) -> tuple[int, ...]:
        """The leaders of the process groups we started (broker, epmd)."""
        return tuple(p.pid for p in (self._broker, self._epmd) if p is not None)

    @property
    def listen_ports(self) -> tuple[int, ...]:
        return (self.port, self.dist_port, self.epmd_port)

    def log_tail(self, lines: int = 4) -> str:
        """Why the broker failed, from its log and console output, on one line."""
        if self._layout is None:
            return "no log output"
        return summarize_failure(
            _lines(self._layout.logs / "rabbit.log"), _lines(self._layout.output), lines
        )

    def __enter__(self) -> Broker:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        for exe in (str(SERVER), EPMD):
            if shutil.which(exe) is None:
                raise UsageError(f"{Path(exe).name} is not installed; run `make setup`")
        ports = free_ports(3)
        self.port = self._wanted_port or ports[0]
        self.dist_port, self.epmd_port = ports[1], ports[2]
        layout = self._layout = _Layout(Path(tempfile.mkdtemp(prefix="trove-rabbit-")))
        user = _drop_to()
        self._write_tree(layout, user)
        env = self._environment(layout)
        started = time.monotonic()
        self._output = layout.output.open("ab")
        self._epmd = self._spawn(
            [EPMD, "-address", LOOPBACK, "-port", str(self.epmd_port)], env, layout, user
        )
        self._wait_for_epmd(started + 10.0)
        log.info("starting RabbitMQ %s on %s:%d", self.nodename, LOOPBACK, self.port)
        self._broker = self._spawn([str(SERVER)], env, layout, user)
        deadline = started + self.start_timeout
        while not amqp_ready(self.port):
            cancel.check()
            if self._broker.poll() is not None:
                raise BrokerError(f"rabbitmq-server stopped while starting: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"rabbitmq-server did not accept AMQP connections on {LOOPBACK}:{self.port} "
                    f"within {self.start_timeout:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - started
        log.info("RabbitMQ ready on %s:%d in %.1f s", LOOPBACK, self.port, self.start_seconds)

    def _write_tree(self, layout: _Layout, user: pwd.struct_passwd | None) -> None:
        for d in (layout.home, layout.mnesia, layout.logs):
            d.mkdir(parents=True)
        layout.config.write_text(
            "# Written by trove-image-assembler for one boot test.\n"
            f"listeners.tcp.default = {LOOPBACK}:{self.port}\n"
            # `guest` from loopback only (RabbitMQ's default): guests come in through socat.
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        layout.env_file.write_text("")
        layout.plugins_file.write_text("[].\n")
        if user is not None:
            for path in (layout.root, *layout.root.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _environment(self, layout: _Layout) -> dict[str, str]:
        """A clean environment: nothing of the caller's RABBITMQ_*/ERL_* settings leaks in."""
        # Every Erlang node started from this environment (the broker, and the short-lived
        # "epmd-starter" node RabbitMQ runs while booting) gets these flags: distribution on
        # loopback only, and never a daemon epmd of its own.
        erl_flags = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(layout.home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "ERL_FLAGS": erl_flags,
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port),
            # The default (AMQP port + 20000) can exceed 65535 for a kernel-chosen port.
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(layout.mnesia),
            "RABBITMQ_LOG_BASE": str(layout.logs),
            "RABBITMQ_LOGS": str(layout.logs / "rabbit.log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(layout.feature_flags),
            "RABBITMQ_CONFIG_FILE": str(layout.config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(layout.root / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(layout.env_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(layout.plugins_file),
            "RABBITMQ_PID_FILE": str(layout.root / "rabbit.pid"),
        }

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        layout: _Layout,
        user: pwd.struct_passwd | None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-lived child in its own process group, registered for cancellation.

        Not assembler.run.run: that one waits for its command to end; these run for the
        whole boot test.
        """
        if shutil.which(SETPRIV):
            # Each child runs in a session of its own, so nothing stops it if we are killed
            # without unwinding (SIGKILL, a bare SIGTERM): have the kernel send it SIGTERM when
            # the thread that started it dies. For the broker that is its start script, which
            # then shuts the VM down.
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        log.debug("spawn: %s", " ".join(argv))
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=self._output,
            cwd=layout.root,
            env=env,
            start_new_session=True,  # its own group: a sweep at stop finds every descendant
            preexec_fn=die_with_parent(),
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,  # not root's supplementary groups
        )
        self._registered.enter_context(cancel.child(proc.pid))
        return proc

    def _wait_for_epmd(self, deadline: float) -> None:
        assert self._epmd is not None
        while not _epmd_answers(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(
                    f"epmd did not start on {LOOPBACK}:{self.epmd_port}: {self.log_tail()}"
                )
            time.sleep(0.1)

    def wait(self) -> int:
        """Block until the broker exits (or is cancelled through assembler.cancel)."""
        assert self._broker is not None, "the broker was not started"
        return self._broker.wait()

    def stop(self) -> None:
        """Stop the broker (SIGTERM: Erlang shuts down cleanly), then epmd; remove the tree."""
        if self._broker is not None:
            _stop_group(self._broker, "rabbitmq-server")
        if self._epmd is not None:
            _stop_group(self._epmd, "epmd")
        self._registered.close()
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._layout is not None:
            if self.keep_logs is not None:
                self.keep_logs.mkdir(parents=True, exist_ok=True)
                for name in ("rabbit.log", "startup.log"):
                    src = self._layout.logs / name
                    if src.exists():
                        shutil.copyfile(src, self.keep_logs / f"rabbitmq-{name}")
            shutil.rmtree(self._layout.root, ignore_errors=True)
        self._broker = self._epmd = None
        self._layout = None


def _epmd_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as s:
            s.sendall(EPMD_NAMES_REQ)
            return len(s.recv(4)) > 0  # its own port number, then the names
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM the leader, wait, then SIGKILL whatever is left in its process group.

    The leader of the broker's group is RabbitMQ's start script, which turns SIGTERM into a
    clean shutdown of the Erlang VM and waits for it (~1 s). The VM's helpers (erl_child_setup
    and its children) run in a session of their own and end with the VM.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(port: int | None = None, start_timeout: float = START_TIMEOUT) -> int:
    """Run a broker in the foreground until interrupted, for trying a guest by hand.

    Prints the URL for the host and the one a guest uses through the boot test's forward.
    Returns only by an error: Interrupted when the CLI is cancelled, BrokerError if the broker
    dies on its own.
    """
    guest_addr, guest_port = GUEST_ADDR, GUEST_PORT
    with Broker(port, start_timeout) as broker:
        print(f"RabbitMQ ready in {broker.start_seconds:.1f} s", flush=True)
        print(f"host:  {broker.host_url}", flush=True)
        print(f"guest: {broker.url_from_guest(guest_addr, guest_port)}", flush=True)
        returncode = broker.wait()
        cancel.check()
        raise BrokerError(f"rabbitmq-server stopped by itself ({returncode}): {broker.log_tail()}")
