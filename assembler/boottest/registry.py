"""A private container registry on 127.0.0.1: Debian's docker-registry (distribution 2.8),
run as our child on a config of its own (its packaged service and config listen on every
interface and are never used).

Its storage, config, htpasswd and log live in one temporary directory removed at stop. With
`users`, it asks for HTTP Basic logins checked against a bcrypt htpasswd file we write
(distribution reads bcrypt entries only). If we die without unwinding, the kernel stops it
(setpriv --pdeathsig). The guest reaches it through a QEMU guestfwd (see vm.Forward).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from assembler import cancel
from assembler.boottest.rabbit import free_ports
from assembler.boottest.vm import Forward
from assembler.errors import AssemblerError, UsageError
from assembler.run import die_with_parent

log = logging.getLogger(__name__)

SERVER = "/usr/bin/docker-registry"
SETPRIV = "setpriv"  # util-linux
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0  # it listens within ~50 ms here
STOP_TIMEOUT = 10.0
# Where the boot test's guest finds it (a guestfwd address inside its user network).
GUEST_ADDR = "169.254.0.102"
GUEST_PORT = 5000
# Cost of the htpasswd hashes: the registry checks one per request, and these logins guard a
# throwaway registry on loopback, so fast beats strong (4 is bcrypt's minimum).
BCRYPT_ROUNDS = 5
# An access log line: `127.0.0.1 - alice [02/Dec/2026:01:03:49 +0000] "GET /v2/ HTTP/1.1" 200 2 ...`
_ACCESS = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) ')
_LEVEL_ERROR = re.compile(r'level=(?:error|fatal|panic) msg="([^"]*)"')


class RegistryStartError(AssemblerError):
    """docker-registry did not start, or died; the message carries the end of its log."""


def htpasswd_line(user: str, password: str) -> str:
    if ":" in user or not user or "\n" in user + password:
        raise UsageError(f"registry user {user!r} cannot be written to an htpasswd file")
    import bcrypt  # only an authenticated registry needs it

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    return f"{user}:{hashed}"


def config(port: int, storage: Path, htpasswd: Path | None) -> dict[str, object]:
    """distribution's configuration (JSON is YAML, which is what it reads)."""
    cfg: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        # A secret of its own: without one it warns and makes a random one anyway.
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": secrets.token_hex(16)},
    }
    if htpasswd is not None:
        cfg["auth"] = {"htpasswd": {"realm": "trove-image-assembler", "path": str(htpasswd)}}
    return cfg


def answers(port: int, timeout: float = 1.0) -> bool:
    """True when a distribution registry answers GET /v2/ (200, or 401 with a login wanted)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
    except OSError:
        return False
    finally:
        conn.close()
    api = response.getheader("Docker-Distribution-Api-Version", "")
    return response.status in (200, 401) and api.startswith("registry/2")


class Registry:
    """`with Registry() as r:` runs a registry at r.host until the block ends."""

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        keep_logs: Path | None = None,
    ) -> None:
        self.users = dict(users or {})
        self.start_timeout = start_timeout
        self.keep_logs = keep_logs  # where its log is copied when it stops
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._registered = contextlib.ExitStack()

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def storage(self) -> Path:
        """Its filesystem storage (a test may tamper with blobs under docker/registry/v2)."""
        assert self.root is not None, "the registry was not started"
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "the registry was not started"
        return self.root / "registry.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def forward(self, guest_addr: str = GUEST_ADDR, guest_port: int = GUEST_PORT) -> Forward:
        """The QEMU forward that makes guest_addr:guest_port reach this registry."""
        return Forward(guest_addr, guest_port, self.port)

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request it has logged so far, in order."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [(m[1], m[2], int(m[3])) for line in text.splitlines() if (m := _ACCESS.match(line))]

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "no log output"
        errors = [m[1] for line in text.splitlines() if (m := _LEVEL_ERROR.search(line))]
        tail = errors[-lines:] or [line for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(line[:300] for line in tail) or "no log output"

    def __enter__(self) -> Registry:
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
        if not os.access(SERVER, os.X_OK):
            raise UsageError("docker-registry is not installed; run `make setup`")
        self.root = Path(tempfile.mkdtemp(prefix="trove-registry-"))
        self.storage.mkdir()
        htpasswd = None
        if self.users:
            htpasswd = self.root / "htpasswd"
            lines = [htpasswd_line(u, p) for u, p in sorted(self.users.items())]
            htpasswd.write_text("\n".join(lines) + "\n")
            htpasswd.chmod(0o600)
        (self.port,) = free_ports(1)
        config_path = self.root / "config.yml"
        config_path.write_text(json.dumps(config(self.port, self.storage, htpasswd), indent=2))
        argv = [SERVER, "serve", str(config_path)]
        if shutil.which(SETPRIV):
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        log.debug("spawn: %s", " ".join(argv))
        self._output = self.log_path.open("ab")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=self._output,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no REGISTRY_* overrides
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._registered.enter_context(cancel.child(self._proc.pid))
        while not answers(self.port):
            cancel.check()
            if self._proc.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry stopped while starting: {self.log_tail()}"
                )
            if time.monotonic() - started > self.start_timeout:
                raise RegistryStartError(
                    f"docker-registry did not answer on {self.host} within "
                    f"{self.start_timeout:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.05)
        log.info("registry ready on %s in %.2f s", self.host, time.monotonic() - started)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; then its directory goes (log kept if asked)."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "docker-registry did not stop within %.0f s; killing it", STOP_TIMEOUT
                    )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
            proc.wait()
        self._registered.close()
        if self._output is not None:
            self._output.close()
            self._output = None
        if self.root is not None:
            if self.keep_logs is not None and self.log_path.exists():
                self.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log_path, self.keep_logs / "registry.log")
            shutil.rmtree(self.root, ignore_errors=True)
        self._proc = None
        self.root = None
