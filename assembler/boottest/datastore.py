"""The datastores the boot test creates a database on, and what Trove sends to create one.

Facts per datastore manager are trove 26.0.0's own option defaults (trove/common/cfg.py,
`[<manager>]` groups; tests/unit/test_datastore.py holds them against trove's). The `prepare`
arguments are what trove's taskmanager casts for a plain `trove create` (taskmanager/models.py
`create_instance` -> `_guest_prepare`; guestagent/api.py `prepare`), and `config_contents`
is trove's own `templates/<manager>/config.template` rendered by trove's own
SingleInstanceConfigTemplate. Then `query_round_trip` proves, from the host, that the database
the agent made answers to the user the agent made.

trove, psycopg2 and pymysql are imported when first needed: they come with the `boot` extra.
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from assembler import cancel
from assembler.errors import UsageError


@dataclass(frozen=True)
class Datastore:
    """One datastore manager as the agent knows it (its `[<manager>]` option group)."""

    manager: str
    port: int  # the first of `tcp_ports`: what the container publishes
    mount_point: str  # where the agent mounts the volume (`mount_point`)
    image_option: str  # the option naming the container image, without a tag
    default_image: str  # that option's default (Docker Hub's official image)
    client: str  # the Python client query_round_trip uses
    test_double: str  # the repository of our stand-in image (assembler/standin/specs.py)
    ignore_users: tuple[str, ...]  # names the agent will not create (`ignore_users`)
    ignore_dbs: tuple[str, ...]  # likewise for databases (`ignore_dbs`)


DATASTORES: dict[str, Datastore] = {
    ds.manager: ds
    for ds in (
        Datastore(
            "postgresql", 5432, "/var/lib/postgresql", "[postgresql] docker_image",
            "postgres", "psycopg2", "trove-test-double/postgresql",
            ("os_admin", "postgres"), ("os_admin", "postgres"),
        ),
        Datastore(
            "mariadb", 3306, "/var/lib/mysql", "[mariadb] docker_image", "mariadb", "pymysql",
            "trove-test-double/mariadb",
            ("os_admin", "root"), ("mysql", "information_schema", "performance_schema"),
        ),
        # Data only: no stand-in image is built for mysql (its test_double does not exist);
        # an operator's own image (--datastore-source, --docker-image) can still be tried.
        Datastore(
            "mysql", 3306, "/var/lib/mysql", "[mysql] docker_image", "mysql", "pymysql",
            "trove-test-double/mysql",
            ("os_admin", "root"), ("mysql", "information_schema", "performance_schema", "sys"),
        ),
    )
}  # fmt: skip

# Where our config_contents differs from what trove renders, and why. Every entry is opt-in
# (a keyword of config_contents); by default the text is trove's, unchanged.
ADJUSTMENTS: dict[str, tuple[str, ...]] = {
    "postgresql": (
        "locale=NAME: trove's template sets lc_messages, lc_monetary, lc_numeric and lc_time "
        "to 'en_US.utf8', and PostgreSQL refuses to start when that locale is not installed "
        "(Debian's own postgres has only C and C.UTF-8 unless `locales` is configured); a "
        "stand-in image without it gets NAME (e.g. 'C.UTF-8') in those four lines instead.",
    ),
    # MariaDB 10.11 (Debian bookworm) accepts trove's mariadb template as it is: `mariadbd
    # --help --verbose` on it only warns that innodb_log_files_in_group "was removed. It does
    # nothing now". The *mysql* template is the one MariaDB refuses (secure-file-priv = NULL
    # cannot be normalized, exit 1), but trove renders the mariadb template for the mariadb
    # manager, so nothing needs changing.
    "mariadb": (),
    "mysql": (),
}

TROVE_LOCALE = "en_US.utf8"  # what trove's postgresql template names in its lc_* lines
LC_SETTINGS = ("lc_messages", "lc_monetary", "lc_numeric", "lc_time")
TABLE = "assembler_boottest"
RETRY_INTERVAL = 1.0


def get_datastore(manager: str) -> Datastore:
    """The data of one manager; UsageError naming the known ones otherwise."""
    try:
        return DATASTORES[manager]
    except KeyError:
        known = ", ".join(sorted(DATASTORES))
        raise UsageError(f"unknown datastore manager {manager!r}; known: {known}") from None


def mount_point(manager: str) -> str:
    """Where the agent of `manager` mounts its volume (trove's `[<manager>] mount_point`)."""
    return get_datastore(manager).mount_point


def parse_datastore(text: str) -> tuple[str, str]:
    """`postgresql:15` -> ("postgresql", "15"): a manager and a version (the image's tag)."""
    manager, sep, version = text.strip().partition(":")
    if not sep or not manager or not version:
        raise UsageError(f"datastore {text!r} is not MANAGER:VERSION, e.g. postgresql:15")
    get_datastore(manager)
    # The agent runs f"{docker_image}:{ds_version}": the version must be a valid image tag.
    if len(version) > 128 or not all(c.isalnum() or c in "._-" for c in version):
        raise UsageError(f"datastore version {version!r} is not a valid image tag")
    return manager, version


@contextlib.contextmanager
def _quiet_imports() -> Iterator[None]:
    # Import-time noise of the OpenStack stack (eventlet, oslo deprecations).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@dataclass(frozen=True)
class _DatastoreVersion:
    """The attributes SingleInstanceConfigTemplate reads of trove's DatastoreVersion row."""

    datastore_name: str  # devstack names each datastore after its manager
    manager: str
    name: str
    version: str


def config_contents(
    manager: str, version: str, memory_mb: int, instance_id: str, *, locale: str | None = None
) -> str:
    """trove's `templates/<manager>/config.template` rendered as its taskmanager does.

    trove's own SingleInstanceConfigTemplate and jinja environment render it: it picks the
    template by datastore name and version like trove (a `mysql/5.5/` one wins for 5.5) and
    passes flavor (ram = memory_mb), datastore and server_id. The environment reads only the
    default of trove's `template_path` option, so no global config is loaded. `locale`: see
    ADJUSTMENTS.
    """
    get_datastore(manager)
    try:
        with _quiet_imports():
            from trove.common.template import SingleInstanceConfigTemplate
    except ImportError as exc:
        raise UsageError(
            f"rendering trove's config templates needs the `boot` extra: {exc}"
        ) from exc
    row = _DatastoreVersion(manager, manager, version, version)
    text = str(SingleInstanceConfigTemplate(row, {"ram": memory_mb}, instance_id).render())
    if locale is not None:
        if manager != "postgresql":
            raise UsageError(f"locale is a postgresql adjustment, not one for {manager}")
        text = _replace_locale(text, locale)
    return text


def _replace_locale(text: str, locale: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if line.split("=", 1)[0].strip() in LC_SETTINGS:
            line = line.replace(f"'{TROVE_LOCALE}'", f"'{locale}'", 1)
        lines.append(line)
    return "".join(lines)


def prepare_kwargs(
    manager: str,
    version: str,
    memory_mb: int,
    database: str,
    user: str | None,
    password: str,
    device_path: str = "/dev/vdb",
    *,
    instance_id: str = "",
    packages: str = "",
    locale: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of the `prepare` cast of a plain create with one database and one
    user who may use it (trove's API builds both with populate_validated_databases and
    populate_users from the request body); user None sends no user at all.

    The datastore version's `packages` is a string in trove's database ("" as devstack
    registers them); the guest API splits a non-empty one into a list, so "" goes as "".
    """
    ds = get_datastore(manager)
    if database in ds.ignore_dbs:
        raise UsageError(f"database {database!r} is reserved for {manager}: the agent skips it")
    if user is not None and user in ds.ignore_users:
        raise UsageError(f"user {user!r} is reserved for {manager}: the agent skips it")
    try:
        with _quiet_imports():
            # The generic models trove's API serializes with (extensions/common/common.py):
            # their serialize() is the object's __dict__ of underscored fields.
            from trove.common.db.models import DatastoreSchema, DatastoreUser
    except ImportError as exc:
        raise UsageError(
            f"building trove's prepare arguments needs the `boot` extra: {exc}"
        ) from exc
    try:
        schema = DatastoreSchema(name=database)
        users = []
        if user is not None:
            grantee = DatastoreUser(name=user, host="%")
            grantee.password = password
            grantee.databases = database
            users.append(dict(grantee.serialize()))
    except ValueError as exc:
        raise UsageError(f"not a database or user trove would accept: {exc}") from exc
    return {
        "packages": packages.split() if packages else packages,
        "databases": [dict(schema.serialize())],
        "memory_mb": memory_mb,
        "users": users,
        "device_path": device_path,
        "mount_point": ds.mount_point,
        "backup_info": None,
        "config_contents": config_contents(manager, version, memory_mb, instance_id, locale=locale),
        "root_password": None,
        "overrides": {},
        "cluster_config": None,
        "snapshot": None,
        "modules": [],
        "ds_version": version,
    }


# The query round trip ---------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# Connection failures worth waiting out: nothing listens yet, or docker's port proxy accepts
# and drops the connection while the database inside is still starting.
_TRANSIENT = (
    "connection refused",
    "connection reset",
    "server closed the connection unexpectedly",  # psycopg2
    "lost connection",  # pymysql, 2013
    "the database system is starting up",
    "timeout expired",  # psycopg2's connect_timeout
    "timed out",  # pymysql's
)


def _transient(text: str) -> bool:
    low = text.lower()
    return any(words in low for words in _TRANSIENT)


def _connect_postgresql(
    host: str, port: int, user: str, password: str, database: str, timeout: float
) -> Any:
    # Through importlib: neither client ships type hints, and mypy is strict.
    psycopg2 = importlib.import_module("psycopg2")
    return psycopg2.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        dbname=database,
        connect_timeout=max(1, int(timeout)),
    )


def _connect_mysql(
    host: str, port: int, user: str, password: str, database: str, timeout: float
) -> Any:
    pymysql = importlib.import_module("pymysql")
    return pymysql.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        connect_timeout=max(1.0, timeout),
        read_timeout=max(1.0, timeout),
        write_timeout=max(1.0, timeout),
    )


_CONNECT: dict[str, Callable[[str, int, str, str, str, float], Any]] = {
    "psycopg2": _connect_postgresql,
    "pymysql": _connect_mysql,
}


def _round_trip(conn: Any, token: str) -> str | None:
    """Create the table, insert the token, read it back; the value read (None if no row)."""
    with contextlib.closing(conn.cursor()) as cur:
        # Plain SQL both dialects take; the token is a parameter, never spliced in.
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (token VARCHAR(64) NOT NULL)")
        cur.execute(f"INSERT INTO {TABLE} (token) VALUES (%s)", (token,))
        conn.commit()
        cur.execute(f"SELECT token FROM {TABLE} WHERE token = %s", (token,))
        row = cur.fetchone()
    return None if row is None else str(row[0])


def query_round_trip(
    manager: str,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    timeout: float,
) -> tuple[bool, str]:
    """Connect from the host as the user the agent created, write a random token into a new
    table of its database and read it back: (ok, one line saying what happened).

    A refused (or dropped) connection is retried until `timeout` seconds have passed: the
    container may still be starting. Any other failure (a refused login, a missing database
    or privilege) ends at once with the server's own words.
    """
    client = get_datastore(manager).client
    connect = _CONNECT[client]
    started = time.monotonic()
    deadline = started + timeout
    token = secrets.token_hex(16)
    where = f"{user}@{host}:{port}/{database}"
    attempts = 0
    while True:
        cancel.check()
        attempts += 1
        left = deadline - time.monotonic()
        try:
            conn = connect(host, port, user, password, database, max(1.0, min(10.0, left)))
        except ImportError as exc:
            return False, f"{client} is not installed (the `boot` extra): {exc}"
        except Exception as exc:  # each client's own OperationalError and friends
            text = _one_line(exc)
            if _transient(text) and time.monotonic() + RETRY_INTERVAL < deadline:
                time.sleep(RETRY_INTERVAL)
                continue
            spent = time.monotonic() - started
            tries = f" after {attempts} attempts in {spent:.0f} s" if attempts > 1 else ""
            return False, f"cannot connect as {where}{tries}: {text}"
        break
    try:
        with contextlib.closing(conn):
            got = _round_trip(conn, token)
    except Exception as exc:
        return False, f"connected as {where}, but the query failed: {_one_line(exc)}"
    if got != token:
        return False, f"connected as {where}, but read back {got!r} instead of {token!r}"
    spent = time.monotonic() - started
    return True, f"{where}: wrote and read back a token in table {TABLE} in {spent:.1f} s"
