"""The boot test's datastore facts, trove's prepare arguments and the host's query round trip.

The facts are held against trove 26.0.0's own option defaults and serializers; the config is
trove's own template, and the PostgreSQL one is proven by starting a real PostgreSQL 15 on
loopback with it, then running the query round trip against that server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assembler.boottest import datastore
from assembler.boottest.datastore import (
    DATASTORES,
    config_contents,
    parse_datastore,
    prepare_kwargs,
    query_round_trip,
)
from assembler.boottest.rabbit import free_ports
from assembler.errors import UsageError

with warnings.catch_warnings():  # the OpenStack stack's import-time deprecation noise
    warnings.simplefilter("ignore", DeprecationWarning)
    from trove.common import cfg as trove_cfg
    from trove.common.db.mysql.models import MySQLSchema, MySQLUser
    from trove.common.db.postgresql.models import PostgreSQLSchema, PostgreSQLUser

# Debian's server package (`postgresql`, which `make setup` installs): 15 on bookworm, 17 on trixie.
PG_BIN = max(
    Path("/usr/lib/postgresql").glob("*/bin/initdb"), default=Path("/nonexistent/bin/initdb")
).parent


def test_parse_datastore() -> None:
    assert parse_datastore("postgresql:15") == ("postgresql", "15")
    assert parse_datastore("mariadb:10.11") == ("mariadb", "10.11")
    for bad in ("postgresql", "postgresql:", ":15", "postgresql:1 5", "postgresql:a/b"):
        with pytest.raises(UsageError):
            parse_datastore(bad)
    with pytest.raises(
        UsageError, match=r"unknown datastore manager 'mongodb'; known: mariadb, mysql, postgresql"
    ):
        parse_datastore("mongodb:7")


@pytest.mark.parametrize("manager", sorted(DATASTORES))
def test_facts_are_trove_s_option_defaults(manager: str) -> None:
    ds = DATASTORES[manager]
    defaults = {o.name: o.default for o in getattr(trove_cfg, f"{manager}_opts")}
    assert str(ds.port) == defaults["tcp_ports"][0]
    assert ds.mount_point == defaults["mount_point"] == datastore.mount_point(manager)
    assert ds.image_option == f"[{manager}] docker_image"
    assert ds.default_image == defaults["docker_image"]
    assert list(ds.ignore_users) == defaults["ignore_users"]
    assert list(ds.ignore_dbs) == defaults["ignore_dbs"]


def _setting(text: str, name: str) -> str:
    values = [
        line.split("=", 1)[1].split("#", 1)[0].strip()
        for line in text.splitlines()
        if line.split("=", 1)[0].strip() == name
    ]
    assert len(values) == 1, (name, values)
    return values[0]


def test_postgresql_config_is_trove_s_template_for_the_memory_given() -> None:
    small = config_contents("postgresql", "15", 1024, "guest-1")
    big = config_contents("postgresql", "15", 4096, "guest-1")
    assert isinstance(small, str)
    assert _setting(small, "shared_buffers") == "102MB"  # 10 % of 1024 below 3 GB
    assert _setting(big, "shared_buffers") == "1024MB"  # 25 % from 3 GB
    assert _setting(small, "effective_cache_size") == "512MB"
    assert _setting(big, "effective_cache_size") == "3584MB"
    assert _setting(small, "wal_keep_size") == "80"  # the >= 13 branch of the template
    assert _setting(small, "lc_messages") == "'en_US.utf8'"  # unchanged unless asked
    assert _setting(small, "include_dir") == "'/etc/postgresql/conf.d'"
    old = config_contents("postgresql", "12", 1024, "guest-1")
    assert _setting(old, "wal_keep_segments") == "5"
    adjusted = config_contents("postgresql", "15", 1024, "guest-1", locale="C.UTF-8")
    assert all(_setting(adjusted, k) == "'C.UTF-8'" for k in datastore.LC_SETTINGS)
    assert adjusted.replace("C.UTF-8", "en_US.utf8") == small


def test_mariadb_config_is_trove_s_mariadb_template() -> None:
    text = config_contents("mariadb", "10.11", 2048, "guest-1")
    assert isinstance(text, str)
    assert _setting(text, "innodb_buffer_pool_size") == "600M"  # 150 M per 512 MB
    assert _setting(text, "max_connections") == "400"
    assert _setting(text, "datadir") == "/var/lib/mysql/data"
    assert int(_setting(text, "server_id")) >= 0
    assert "query_cache_type" in text  # the mariadb template, not mysql's
    assert "secure-file-priv" not in text and "default_authentication_plugin" not in text
    with pytest.raises(UsageError, match="postgresql adjustment"):
        config_contents("mariadb", "10.11", 2048, "guest-1", locale="C.UTF-8")


def test_mysql_config_picks_trove_s_per_version_template() -> None:
    assert "default_authentication_plugin" in config_contents("mysql", "8.0", 1024, "g")
    assert "default_authentication_plugin" not in config_contents("mysql", "8.4", 1024, "g")
    assert "default_authentication_plugin" in config_contents("mysql", "5.7", 1024, "g")


def test_prepare_kwargs_are_what_trove_s_taskmanager_sends() -> None:
    kwargs = prepare_kwargs("postgresql", "15", 1024, "appdb", "app", "s3cret", instance_id="g-1")
    assert list(kwargs) == [
        "packages", "databases", "memory_mb", "users", "device_path", "mount_point",
        "backup_info", "config_contents", "root_password", "overrides", "cluster_config",
        "snapshot", "modules", "ds_version",
    ]  # fmt: skip
    # What the API's populate_validated_databases / populate_users build from a request body.
    assert kwargs["databases"] == [{"_name": "appdb", "_collate": None, "_character_set": None}]
    assert kwargs["users"] == [
        {
            "_name": "app",
            "_password": "s3cret",
            "_host": "%",
            "_databases": [{"_name": "appdb", "_collate": None, "_character_set": None}],
            "_is_root": False,
        }
    ]
    assert kwargs["packages"] == ""  # devstack registers versions with packages ""
    assert kwargs["memory_mb"] == 1024
    assert (kwargs["device_path"], kwargs["mount_point"]) == ("/dev/vdb", "/var/lib/postgresql")
    assert kwargs["config_contents"] == config_contents("postgresql", "15", 1024, "g-1")
    assert (kwargs["overrides"], kwargs["modules"], kwargs["ds_version"]) == ({}, [], "15")
    assert kwargs["backup_info"] is kwargs["root_password"] is kwargs["snapshot"] is None
    assert kwargs["cluster_config"] is None
    # The agent's own models take them back (trove.guestagent ... create_database/create_user).
    user = PostgreSQLUser.deserialize(kwargs["users"][0])
    assert (user.name, user.password, user.host) == ("app", "s3cret", "%")
    assert PostgreSQLSchema.deserialize(user.databases[0]).name == "appdb"
    maria = prepare_kwargs("mariadb", "10.11", 1024, "appdb", "app", "s3cret")
    assert maria["mount_point"] == "/var/lib/mysql"
    assert MySQLUser.deserialize(maria["users"][0]).databases[0]["_name"] == "appdb"
    assert MySQLSchema.deserialize(maria["databases"][0]).collate == "utf8mb3_general_ci"
    assert prepare_kwargs("mariadb", "10.11", 1024, "appdb", None, "x")["users"] == []
    assert prepare_kwargs("mariadb", "11", 512, "d", "u", "p", packages="a b")["packages"] == [
        "a",
        "b",
    ]


def test_prepare_kwargs_refuse_what_the_agent_would_skip() -> None:
    with pytest.raises(UsageError, match="user 'postgres' is reserved for postgresql"):
        prepare_kwargs("postgresql", "15", 1024, "appdb", "postgres", "x")
    with pytest.raises(UsageError, match="database 'mysql' is reserved for mariadb"):
        prepare_kwargs("mariadb", "10.11", 1024, "mysql", "app", "x")


@pytest.mark.parametrize("manager", ["postgresql", "mariadb"])
def test_query_round_trip_against_a_closed_port_retries_then_says_so(manager: str) -> None:
    (port,) = free_ports(1)
    t0 = time.monotonic()
    ok, detail = query_round_trip(manager, "127.0.0.1", port, "app", "pw", "appdb", 2.5)
    spent = time.monotonic() - t0
    assert not ok
    assert detail.startswith(f"cannot connect as app@127.0.0.1:{port}/appdb after ")
    assert "refused" in detail.lower()
    assert "\n" not in detail
    # Retried for its timeout, then gave up (the bound is loose: a loaded host is slow to start).
    assert 1.5 <= spent < 20, spent


# A real PostgreSQL on loopback -------------------------------------------------------------


def _pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")  # initdb refuses to run as root
    except KeyError:
        pytest.fail("no postgres user: install postgresql-15 (`make setup` needs it)")


def _as(user: pwd.struct_passwd, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], text=True,
        capture_output=True, check=False, **kw,
    )  # fmt: skip


class Postgres:
    """A throwaway PostgreSQL 15 cluster in a tmp dir, run as `postgres`, on 127.0.0.1."""

    def __init__(self, conf: str) -> None:
        self.user = _pg_user()
        self.root = Path(tempfile.mkdtemp(prefix="trove-pg-"))
        self.port = free_ports(1)[0]
        self.conf = conf
        self.log = self.root / "log"

    def start(self) -> subprocess.CompletedProcess[str]:
        os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        init = _as(self.user, [str(PG_BIN / "initdb"), "-D", str(self.root / "data"),
                               "-U", "postgres", "--auth-local=trust", "--auth-host=md5",
                               "-E", "UTF8",
                               "--locale=C.UTF-8"])  # fmt: skip
        assert init.returncode == 0, init.stderr
        (self.root / "conf.d").mkdir()
        # Trove's own config file, its include_dir and archive paths moved into our tree.
        conf = self.conf.replace("/etc/postgresql/conf.d", str(self.root / "conf.d"))
        conf = conf.replace("/var/lib/postgresql/data/wal_archive", str(self.root / "wal"))
        (self.root / "postgresql.conf").write_text(conf)
        (self.root / "wal").mkdir()
        for path in (self.root / "conf.d", self.root / "wal", self.root / "postgresql.conf"):
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        # What trove's conf.d and pg_hba do, here on loopback only: md5 for everyone.
        opts = (f"-c config_file={self.root / 'postgresql.conf'} -c data_directory={self.root / 'data'}"
                f" -c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}")  # fmt: skip
        return _as(self.user, [str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-w",
                               "-t", "30", "-l", str(self.log), "-o", opts, "start"])  # fmt: skip

    def sql(self, statement: str) -> None:
        done = _as(self.user, ["psql", "-h", str(self.root), "-p", str(self.port), "-U",
                               "postgres", "-v", "ON_ERROR_STOP=1", "-c", statement])  # fmt: skip
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        _as(
            self.user, [str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop"]
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "postgres").exists():
        pytest.fail(f"{PG_BIN}/postgres is missing: apt-get install postgresql-15")
    # The agent's own config, with the one adjustment a host without en_US.utf8 needs.
    server = Postgres(config_contents("postgresql", "15", 1024, "guest-1", locale="C.UTF-8"))
    started = server.start()
    assert started.returncode == 0, server.log.read_text() if server.log.exists() else started
    try:
        server.sql("CREATE USER app WITH PASSWORD 's3cret'")
        server.sql("CREATE DATABASE appdb OWNER app")
        yield server
    finally:
        server.stop()


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
    return [line.split()[3] for line in out.stdout.splitlines()]


def test_trove_s_postgresql_config_runs_a_real_server(postgres: Postgres) -> None:
    assert _listening(postgres.port) == [f"127.0.0.1:{postgres.port}"]
    with socket.create_connection(("127.0.0.1", postgres.port), timeout=2):
        pass


def test_query_round_trip_as_the_created_user(postgres: Postgres) -> None:
    ok, detail = query_round_trip(
        "postgresql", "127.0.0.1", postgres.port, "app", "s3cret", "appdb", 10
    )
    assert ok, detail
    assert detail.startswith(f"app@127.0.0.1:{postgres.port}/appdb: wrote and read back a token")
    again, _ = query_round_trip(
        "postgresql", "127.0.0.1", postgres.port, "app", "s3cret", "appdb", 10
    )
    assert again  # the table exists now: IF NOT EXISTS, a new token


def test_query_round_trip_wrong_password_fails_at_once(postgres: Postgres) -> None:
    t0 = time.monotonic()
    ok, detail = query_round_trip(
        "postgresql", "127.0.0.1", postgres.port, "app", "nope", "appdb", 20
    )
    assert not ok
    assert 'password authentication failed for user "app"' in detail
    assert "after" not in detail and "\n" not in detail
    assert time.monotonic() - t0 < 5  # not retried


def test_trove_s_locale_stops_postgres_on_a_host_without_it() -> None:
    """Why ADJUSTMENTS has its postgresql entry: the unadjusted config needs en_US.utf8."""
    if "en_US.utf8" in subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout:
        pytest.skip("this host has en_US.utf8: trove's config runs unchanged")
    server = Postgres(config_contents("postgresql", "15", 1024, "guest-1"))
    try:
        started = server.start()
        assert started.returncode != 0
        assert "en_US.utf8" in server.log.read_text()
    finally:
        server.stop()
