"""A dev-mode controller for the boot test: an sshd of its own on 127.0.0.1, serving a trove tree.

In dev mode the guest agent's code is not in the image: at first start the guest copies it
from the controller over SSH (as HOST_SCP_USERNAME, with the image's dev key). This plays that
controller: its own config, host key, authorized keys and pid file in a temp dir, listening on
loopback only; QEMU forwards one guest address to it.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from assembler import cancel
from assembler.errors import AssemblerError, UsageError
from assembler.run import die_with_parent, run

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 20.0


class ControllerError(AssemblerError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Controller:
    """`with Controller(trove_tree, authorized_key) as c:` serves trove_tree at c.trove_path."""

    def __init__(self, trove_tree: Path, authorized_key: str, user: str | None = None) -> None:
        if not Path(SSHD).exists():
            raise UsageError("sshd is not installed (openssh-server); run `make setup`")
        self.user = user or getpass.getuser()
        self.trove_path = trove_tree
        self.authorized_key = authorized_key
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="trove-controller-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._stack = contextlib.ExitStack()

    def _config(self) -> Path:
        d = self._dir
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"])
        (d / "authorized_keys").write_text(self.authorized_key.strip() + "\n")
        config = d / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {d / 'host_key'}\n"
            f"PidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The temp dir belongs to whoever runs the test, not to the login user.
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            f"AllowUsers {self.user}\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "LogLevel VERBOSE\n"
        )
        return config

    def __enter__(self) -> Controller:
        config = self._config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        log_file = (self._dir / "sshd.log").open("wb")
        self._proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            preexec_fn=die_with_parent(),
        )
        self._stack.enter_context(cancel.child(self._proc.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ControllerError(f"sshd exited: {self.log_tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    log.info(
                        "controller sshd on 127.0.0.1:%d serving %s", self.port, self.trove_path
                    )
                    return self
            time.sleep(0.2)
        raise ControllerError(
            f"sshd did not listen within {START_TIMEOUT:.0f} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = (self._dir / "sshd.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def logins(self) -> list[str]:
        """sshd's 'Accepted publickey' lines: proof the guest logged in."""
        try:
            text = (self._dir / "sshd.log").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "Accepted publickey" in line]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stack.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def unpack_trove_release(version: str, dest: Path) -> Path:
    """A trove release's source tree (its sdist from PyPI), as a controller's checkout."""
    download = dest / "sdist"
    download.mkdir(parents=True, exist_ok=True)
    run([
        sys.executable, "-m", "pip", "download", "-q", "--no-deps",
        "--no-binary", ":all:", "-d", download, f"trove=={version}",
    ])  # fmt: skip
    sdist = next(download.glob("trove-*.tar.gz"))
    shutil.unpack_archive(sdist, dest)
    tree = dest / f"trove-{version}"
    if not (tree / "contrib" / "trove-guestagent").exists():
        raise ControllerError(f"{sdist.name} has no contrib/trove-guestagent to run")
    return tree
