"""The postgresql stand-in honours the official image's contract as Trove's agent uses it.

The image runs as the agent runs it: user 1001:1001, PGDATA and POSTGRES_PASSWORD in the env,
`postgres -c config_file=/etc/postgresql/postgresql.conf` as the command, and a config like the
one the agent writes (en_US.utf8 lc_* settings, its own hba_file); then what the agent does
next, psycopg2 as postgres over the socket, and a password login over TCP.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
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

PGDATA = "/var/lib/postgresql/data/pgdata"
PASSWORD = "s3cret 'quoted\" pw"
COMMAND = ["postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"]


@dataclass(frozen=True)
class Server:
    root: Path
    config: dict[str, Any]
    port: int
    log: Path


def _agent_config(root: Path, port: int) -> None:
    """What the agent writes into the /etc/postgresql volume, cut to what matters here."""
    etc = root / "etc/postgresql"
    make_dir(root, "/etc/postgresql")
    # Only loopback: the test shares the host's network.
    (etc / "postgresql.conf").write_text(
        f"listen_addresses = '127.0.0.1'\nport = {port}\n"
        "lc_messages = 'en_US.utf8'\nlc_monetary = 'en_US.utf8'\n"
        "lc_numeric = 'en_US.utf8'\nlc_time = 'en_US.utf8'\n"
        f"data_directory = '{PGDATA}'\nhba_file = '/etc/postgresql/pg_hba.conf'\n"
    )
    (etc / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all postgres 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 md5\n"
    )


def _fresh_root(layout: Path, tmp: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp / "root"
    config = unpack(layout, root)
    # The agent's volumes: PGDATA's parent and the socket dir, owned by its uid 1001.
    make_dir(root, "/var/lib/postgresql/data")
    make_dir(root, PGDATA)
    return root, config


@pytest.fixture(scope="module")
def server(postgresql_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("pg")
    root, config = _fresh_root(postgresql_layout, tmp)
    port = free_port()
    _agent_config(root, port)
    log = tmp / "container.log"
    env = {"POSTGRES_PASSWORD": PASSWORD, "PGDATA": PGDATA}
    with running(container_argv(root, config, env, COMMAND), log) as proc:

        def healthy() -> bool:  # the agent's healthcheck: pg_isready -U postgres
            return (
                exec_in(root, config, "pg_isready", "-U", "postgres", "-p", str(port)).returncode
                == 0
            )

        wait_until(healthy, proc, log, timeout=120)
        yield Server(root, config, port, log)


def test_initdb_made_pgdata_as_uid_1001(server: Server) -> None:
    version = inside(server.root, PGDATA) / "PG_VERSION"
    assert version.read_text().strip() == "15"
    assert version.stat().st_uid == 1001
    assert "initdb into" in server.log.read_text()


def test_psycopg2_as_postgres_over_the_socket(server: Server) -> None:
    # The agent's own path: host dir /var/lib/postgresql-socket is the container's socket dir.
    # (/var/run is a symlink to /run, which the host would resolve to its own /run.)
    sock = inside(server.root, "/run/postgresql")
    conn = psycopg2.connect(host=str(sock), port=server.port, user="postgres", dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, current_setting('lc_messages'), version()")
            user, lc_messages, version = cur.fetchone()
    finally:
        conn.close()
    assert (user, lc_messages) == ("postgres", "en_US.utf8")
    assert version.startswith("PostgreSQL 15.")


def test_psql_in_the_image(server: Server) -> None:
    out = exec_in(server.root, server.config, "psql", "-U", "postgres", "-p", str(server.port),
                  "-Atc", "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'postgres'")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "UTF8"


def test_postgres_password_is_the_superusers(server: Server) -> None:
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", password=PASSWORD)
    conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", password="wrong")


def test_empty_pgdata_without_password_is_refused(postgresql_layout: Path, tmp_path: Path) -> None:
    root, config = _fresh_root(postgresql_layout, tmp_path)
    argv = container_argv(root, config, {"PGDATA": PGDATA}, COMMAND)
    out = subprocess_run(argv)
    assert out.returncode != 0
    assert "POSTGRES_PASSWORD is not set" in out.stderr
    assert not any((inside(root, PGDATA)).iterdir())


def test_other_commands_run_as_they_are(postgresql_layout: Path, tmp_path: Path) -> None:
    root, config = _fresh_root(postgresql_layout, tmp_path)
    out = subprocess_run(
        container_argv(root, config, {"PGDATA": PGDATA}, ["pg_basebackup", "--version"])
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("pg_basebackup (PostgreSQL) 15.")
    assert not any((inside(root, PGDATA)).iterdir())  # no initdb for another command


def subprocess_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
