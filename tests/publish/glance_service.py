"""A real Glance on 127.0.0.1 for the publish tests: no Keystone, SQLite, the file store.

Glance 33 no longer serves by itself ("Standalone glance-api is no longer supported"): its WSGI
app `glance.wsgi.api:application` runs under uWSGI (PyPI's pyuwsgi, the `uwsgi` command beside
the running Python) with the options upstream ships in httpd/glance-api-uwsgi.ini. Keystone's
part is played by tests/publish/identity.py in the paste pipeline, Barbican's by
tests/publish/keymanager.py, so Glance's own policies, format inspection and signature checks
all run as in production.

    with Glance(workdir) as glance:
        clouds = glance.write_clouds_yaml()   # OS_CLIENT_CONFIG_FILE=clouds, cloud=glance.cloud
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]  # so uWSGI can import tests.publish.*
BIN = Path(sys.executable).parent  # uwsgi and glance-manage come with this venv's glance
CLOUD = "test-glance"
# Measured here: ~6 s to the first answer with idle cores; Glance imports half of OpenStack.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
TAIL_LINES = 30


class GlanceError(RuntimeError):
    """Glance did not set up or start; the message ends with the tail of its log."""


def free_port() -> int:
    """A free TCP port on loopback (it can be taken before uWSGI binds: then start fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Glance:
    """Glance's API under uWSGI, all its state under `workdir`; a context manager.

    A workdir used again keeps its database and images (db sync is idempotent)."""

    def __init__(
        self,
        workdir: Path,
        project_id: str = "0123456789abcdef0123456789abcdef",
        user_id: str = "fedcba9876543210fedcba9876543210",
    ) -> None:
        self.workdir = workdir.resolve()
        self.project_id = project_id
        self.user_id = user_id
        self.port = 0
        self.cloud = CLOUD
        self._proc: subprocess.Popen[bytes] | None = None

    # -- where things are ---------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:  # OS_GLANCE_CONFIG_DIR: glance-api.conf and its paste ini
        return self.workdir / "etc"

    @property
    def conf(self) -> Path:
        return self.config_dir / "glance-api.conf"

    @property
    def paste(self) -> Path:
        return self.config_dir / "glance-api-paste.ini"

    @property
    def certificates(self) -> Path:  # FileKeyManager's directory: <uuid>.pem
        return self.workdir / "certificates"

    @property
    def images_dir(self) -> Path:  # the file store: one file per active image, named by id
        return self.workdir / "images"

    @property
    def log(self) -> Path:
        return self.workdir / "glance.log"

    @property
    def refuse_file(self) -> Path:  # while it exists, identity.py answers writes with 403
        return self.workdir / "refuse-writes"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- setup --------------------------------------------------------------------------------
    def _write_config(self) -> None:
        dirs = {name: self.workdir / name for name in ("staging", "tasks", "locks")}
        for path in (self.config_dir, self.certificates, self.images_dir, *dirs.values()):
            path.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            textwrap.dedent(f"""\
            [DEFAULT]
            enabled_backends = fs:file

            [database]
            connection = sqlite:///{self.workdir / "glance.sqlite"}

            [glance_store]
            default_backend = fs

            [fs]
            filesystem_store_datadir = {self.images_dir}

            # Glance's reserved stores: where glance-direct stages and where tasks work.
            [os_glance_staging_store]
            filesystem_store_datadir = {dirs["staging"]}

            [os_glance_tasks_store]
            filesystem_store_datadir = {dirs["tasks"]}

            [oslo_concurrency]
            lock_path = {dirs["locks"]}

            [taskflow_executor]
            engine_mode = serial

            # No message bus: notifications go nowhere.
            [oslo_messaging_notifications]
            driver = noop

            [paste_deploy]
            config_file = {self.paste}

            [key_manager]
            backend = tests.publish.keymanager.FileKeyManager

            [file_key_manager]
            certificate_dir = {self.certificates}
            """)
        )
        # Glance's functional tests' pipeline (no authtoken), our identity in front of context.
        self.paste.write_text(
            textwrap.dedent(f"""\
            [pipeline:glance-api]
            pipeline = identity versionnegotiation context rootapp

            [filter:identity]
            paste.filter_factory = tests.publish.identity:filter_factory
            project_id = {self.project_id}
            user_id = {self.user_id}
            roles = admin,member,reader
            refuse_file = {self.refuse_file}

            [filter:versionnegotiation]
            paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

            [filter:context]
            paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

            [composite:rootapp]
            paste.composite_factory = glance.api:root_app_factory
            /: apiversions
            /v2: apiv2app

            [app:apiversions]
            paste.app_factory = glance.api.versions:create_resource

            [app:apiv2app]
            paste.app_factory = glance.api.v2.router:API.factory
            """)
        )

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OS_GLANCE_CONFIG_DIR": str(self.config_dir)}

    def _db_sync(self) -> None:
        with self.log.open("ab") as out:
            done = subprocess.run(
                [str(BIN / "glance-manage"), "--config-file", str(self.conf), "db", "sync"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._env(), cwd=self.workdir, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            self._fail(f"glance-manage db sync exited {done.returncode}")

    def _uwsgi_argv(self) -> list[str]:
        argv = [
            str(BIN / "uwsgi"),
            "--http-socket", f"{LOOPBACK}:{self.port}",  # loopback only, HTTP spoken by workers
            "--module", "glance.wsgi.api:application",
            "--pythonpath", str(REPO),
            # Upstream's options: image data arrives chunked or raw. An upload that stalls
            # stays `saving` until socket-timeout drops it (then back to `queued`).
            "--http-chunked-input", "--http-auto-chunked", "--http-raw-body",
            "--socket-timeout", "30", "--buffer-size", "65535",
            "--add-header", "Connection: close",
            # One worker (SQLite), loaded after the fork (Glance starts threads at load).
            "--master", "--processes", "1", "--threads", "4", "--enable-threads",
            "--lazy-apps", "--need-app", "--die-on-term", "--no-orphans",
        ]  # fmt: skip
        # If the test process dies without unwinding, the kernel stops uWSGI's master.
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else argv

    def start(self) -> Glance:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._write_config()
        self._db_sync()
        with self.log.open("ab") as out:
            # Its own session: stop() signals the whole group (master and worker) at once.
            self._proc = subprocess.Popen(
                self._uwsgi_argv(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=self._env(), cwd=self.workdir,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._proc.poll() is not None:
                self._fail(f"uwsgi exited {self._proc.returncode} before answering")
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"no answer on {self.url} within {START_TIMEOUT:.0f} s")
            time.sleep(0.3)
        return self

    def _answers(self) -> bool:
        """GET / answers with Glance's version list (300 Multiple Choices)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status in (200, 300) and b'"versions"' in resp.read()
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # A worker still in the group after its master went (no-orphans should prevent it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Glance:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> NoReturn:
        raise GlanceError(f"{what}; {self.log}:\n{self.log_tail()}")

    # -- what tests use -----------------------------------------------------------------------
    @contextlib.contextmanager
    def refusing_writes(self) -> Iterator[None]:
        """Every POST/PUT/PATCH/DELETE answers 403 inside the block."""
        self.refuse_file.touch()
        try:
            yield
        finally:
            self.refuse_file.unlink(missing_ok=True)

    def store_certificate(self, certificate: x509.Certificate) -> str:
        """Put a certificate where Glance's key manager finds it; returns its uuid."""
        cert_id = str(uuid.uuid4())
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        (self.certificates / f"{cert_id}.pem").write_bytes(pem)
        return cert_id

    def write_clouds_yaml(self, path: Path | None = None) -> Path:
        """A clouds.yaml whose one cloud (`self.cloud`) is this Glance, without Keystone.

        keystoneauth's `none` plugin sends no token and takes every service to be at
        `endpoint`; openstacksdk then discovers the image API's version from GET /.
        """
        path = path or self.workdir / "clouds.yaml"
        cloud = {"auth_type": "none", "auth": {"endpoint": self.url}, "image_api_version": "2"}
        path.write_text(yaml.safe_dump({"clouds": {self.cloud: cloud}}, sort_keys=False))
        return path
