"""The mariadb stand-in honours the official image's contract as Trove's agent uses it.

The image runs as the agent runs it: user 1001:1001, MYSQL_ROOT_PASSWORD, MYSQL_INITDB_SKIP_TZINFO
and MARIADB_AUTO_UPGRADE in the env, the agent's command (options only, starting with `-`), and a
my.cnf shaped like Trove's mariadb template; then the agent's healthcheck and what it does next:
pymysql as root with the password over the socket, creating os_admin.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.standin.container import (
    container_argv,
    exec_in,
    free_port,
    inside,
    make_dir,
    running,
    unpack,
    wait_until,
)

# Only test-all boots the MariaDB double (make test's database boot is PostgreSQL's): its own
# proof goes with it, and so does its build (~1-4 min on a fresh machine).
pytestmark = pytest.mark.full

PASSWORD = "r00t 'pw\" \\ x"
DATADIR = "/var/lib/mysql/data"
HEALTHCHECK = ["healthcheck.sh", "--defaults-file", f"{DATADIR}/.my-healthcheck.cnf",
               "--connect", "--innodb_initialized"]  # fmt: skip
# trove/guestagent/datastore/mariadb/manager.py's command.
COMMAND = ["--defaults-file=/etc/mysql/my.cnf", "--ignore-db-dir=lost+found",
           "--ignore-db-dir=conf.d", f"--datadir={DATADIR}"]  # fmt: skip
ENV = {
    "MYSQL_ROOT_PASSWORD": PASSWORD,
    "MYSQL_INITDB_SKIP_TZINFO": "1",
    "MARIADB_AUTO_UPGRADE": "1",
}


@dataclass(frozen=True)
class Server:
    root: Path
    config: dict[str, Any]
    port: int
    log: Path


def _agent_config(root: Path, port: int) -> None:
    """The /etc/mysql volume as the agent fills it: my.cnf from its template, and conf.d."""
    etc = root / "etc/mysql"
    for child in etc.iterdir():  # the volume hides the image's own /etc/mysql
        child.unlink() if not child.is_dir() or child.is_symlink() else None
    make_dir(root, "/etc/mysql/conf.d")
    # Trove's template, its [mysqld] cut to what matters here, on loopback only.
    (etc / "my.cnf").write_text(
        f"[client]\nport = {port}\nsocket = /var/run/mysqld/mysqld.sock\n\n"
        f"[mysqld]\nport = {port}\nbind-address = 127.0.0.1\nbasedir = /usr\n"
        f"datadir = {DATADIR}\ntmpdir = /var/tmp\npid_file = /var/run/mysqld/mysqld.pid\n"
        "socket = /var/run/mysqld/mysqld.sock\nskip-external-locking = 1\n"
        "innodb_buffer_pool_size = 64M\ninnodb_file_per_table = 1\n"
        "default_storage_engine = innodb\nlocal-infile = 0\nserver_id = 1\n\n"
        "!includedir /etc/mysql/conf.d/\n"
    )
    (etc / "conf.d/50-system-001-common.cnf").write_text(f"[mysqld]\ndatadir = {DATADIR}\n")


def _fresh_root(layout: Path, tmp: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp / "root"
    config = unpack(layout, root)
    make_dir(root, "/var/lib/mysql")
    make_dir(root, DATADIR)
    return root, config


@pytest.fixture(scope="module")
def server(mariadb_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("mariadb")
    root, config = _fresh_root(mariadb_layout, tmp)
    port = free_port()
    _agent_config(root, port)
    log = tmp / "container.log"
    # Before anything runs there is no healthcheck file: the check must say unhealthy.
    assert exec_in(root, config, *HEALTHCHECK).returncode != 0
    with running(container_argv(root, config, ENV, COMMAND), log) as proc:
        wait_until(lambda: exec_in(root, config, *HEALTHCHECK).returncode == 0, proc, log, 180)
        yield Server(root, config, port, log)


def test_datadir_initialised_as_uid_1001(server: Server) -> None:
    schema = inside(server.root, DATADIR) / "mysql"
    assert schema.is_dir()
    assert schema.stat().st_uid == 1001
    cnf = inside(server.root, DATADIR) / ".my-healthcheck.cnf"
    assert "user=healthcheck" in cnf.read_text()
    assert cnf.stat().st_mode & 0o077 == 0


def _root(server: Server, password: str) -> pymysql.connections.Connection[Any]:
    # The agent's path: the host's /var/lib/mysqld is the container's /var/run/mysqld (a
    # symlink into /run, which the host would resolve to its own /run).
    sock = inside(server.root, "/run/mysqld/mysqld.sock")
    return pymysql.connect(unix_socket=str(sock), user="root", password=password)


def test_root_logs_in_over_the_socket_and_creates_os_admin(server: Server) -> None:
    conn = _root(server, PASSWORD)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), VERSION()")
            user, version = cur.fetchone()
            # What the agent's secure() does first.
            cur.execute("CREATE USER 'os_admin'@'localhost' IDENTIFIED BY 'adminpw'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'os_admin'@'localhost' WITH GRANT OPTION")
            cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = 'root' AND host = '%'")
            (remote_roots,) = cur.fetchone()
    finally:
        conn.close()
    assert user == "root@localhost"
    assert version.startswith("10.11.")
    assert remote_roots == 1  # as the official image makes it; the agent's secure_root drops it
    pymysql.connect(unix_socket=str(inside(server.root, "/run/mysqld/mysqld.sock")),
                    user="os_admin", password="adminpw").close()  # fmt: skip


def test_root_needs_the_password(server: Server) -> None:
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        _root(server, "wrong")
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        _root(server, "")


def test_healthcheck_rejects_an_unknown_check(server: Server) -> None:
    out = exec_in(server.root, server.config, *HEALTHCHECK[:3], "--galera_online")
    assert out.returncode == 2
    assert "unsupported option --galera_online" in out.stderr


def test_empty_datadir_without_password_is_refused(mariadb_layout: Path, tmp_path: Path) -> None:
    root, config = _fresh_root(mariadb_layout, tmp_path)
    _agent_config(root, free_port())
    env = {k: v for k, v in ENV.items() if k != "MYSQL_ROOT_PASSWORD"}
    out = subprocess.run(container_argv(root, config, env, COMMAND), capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode != 0
    assert "MYSQL_ROOT_PASSWORD) is not set" in out.stderr
    assert not (inside(root, DATADIR) / "mysql").exists()
