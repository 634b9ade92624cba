"""The stand-in datastore images, as data: TEST DOUBLES of the official postgres and mariadb images.

Docker Hub is out of reach, so the boot test gives Trove's agent these instead. Each is built
from Debian bookworm's packages and honours the official image's contract as far as the agent
uses it (see overlays/standin/<name>/ for the entrypoints). Their names and labels say they are
test doubles, so nobody mistakes one for the official image.
"""

from __future__ import annotations

from dataclasses import dataclass

from assembler.errors import UsageError

# bookworm's versions of the two servers, which are also the tags.
RELEASE = "bookworm"
NAMESPACE = "trove-test-double"
# The uid:gid Trove's agent runs the container as (`useradd --uid 1001 database` on the guest).
DATABASE_UID = 1001
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class StandIn:
    """One stand-in image."""

    name: str
    repository: str
    tag: str
    # What it stands in for, for its description label.
    official: str
    packages: tuple[str, ...]
    # The package whose version the image carries as a label.
    version_package: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    ports: tuple[int, ...]
    # Env beyond PATH, as the official image sets it.
    env: tuple[tuple[str, str], ...]
    path: str
    stop_signal: str
    # Home of the `database` user (uid 1001) in the image's passwd.
    home: str
    # Runs in the image's root after the packages, as root, before the overlay is laid in.
    setup: str
    # A variant: the image of this other stand-in plus the overlay as one more small layer.
    variant_of: str | None = None

    @property
    def overlay(self) -> str:
        """The project resource directory whose files are laid into the image as they are."""
        return f"overlays/standin/{self.name}"

    @property
    def description(self) -> str:
        fault = ", whose entrypoint fails on purpose," if self.variant_of else ","
        return (
            f"TEST DOUBLE of the official {self.official} image{fault} not the official image: "
            f"built by trove-image-assembler from Debian {RELEASE} packages for Trove's boot tests"
        )


_POSTGRES_SETUP = r"""set -eu
# postgresql-common made a cluster in the image; the agent brings its own data and config.
rm -rf /var/lib/postgresql/15 /etc/postgresql/15
# As the official image: the socket directory and PGDATA's parent are writable by the server.
mkdir -p /var/run/postgresql /var/lib/postgresql/data
chown database:database /var/run/postgresql /var/lib/postgresql/data
chmod 3777 /var/run/postgresql
chmod 1777 /var/lib/postgresql/data
# No JIT provider: PostgreSQL then runs without JIT (it needs none for the agent), and LLVM is
# a third of the image, which every guest pulls and unpacks under emulation.
rm -f /usr/lib/postgresql/15/lib/llvmjit*.so /usr/lib/x86_64-linux-gnu/libLLVM-*.so*
rm -rf /usr/lib/postgresql/15/lib/bitcode
# ssl-cert's snake-oil key pair, made when the package was installed: the same private key in
# every copy of the image (trove's config leaves ssl off), which the boot test's key scan finds
# in the guest's docker store.
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
"""

_MARIADB_SETUP = r"""set -eu
# The package's postinst initialised a datadir; the entrypoint makes the agent's own.
rm -rf /var/lib/mysql/* /var/lib/mysql/.[!.]*
mkdir -p /run/mysqld
chown database:database /run/mysqld /var/lib/mysql
chmod 1777 /run/mysqld
"""

POSTGRESQL = StandIn(
    name="postgresql",
    repository=f"{NAMESPACE}/postgresql",
    tag="15",
    official="postgres",
    # locales: the agent's config sets lc_* to en_US.utf8, which postgres checks at start.
    packages=("postgresql-15", "locales"),
    version_package="postgresql-15",
    entrypoint=("docker-entrypoint.sh",),
    cmd=("postgres",),
    ports=(5432,),
    env=(("LANG", "en_US.utf8"), ("PGDATA", "/var/lib/postgresql/data")),
    # The server's own binaries first, as the official image has them (initdb is not in /usr/bin).
    path=f"/usr/lib/postgresql/15/bin:{BASE_PATH}",
    stop_signal="SIGINT",  # postgres' fast shutdown, as the official image sets it
    home="/var/lib/postgresql",
    setup=_POSTGRES_SETUP,
)

MARIADB = StandIn(
    name="mariadb",
    repository=f"{NAMESPACE}/mariadb",
    tag="10.11",
    official="mariadb",
    packages=("mariadb-server", "mariadb-client", "locales"),
    version_package="mariadb-server",
    entrypoint=("docker-entrypoint.sh",),
    cmd=("mariadbd",),
    ports=(3306,),
    env=(("LANG", "C.UTF-8"),),
    path=BASE_PATH,
    stop_signal="SIGTERM",
    home="/var/lib/mysql",
    setup=_MARIADB_SETUP,
)

POSTGRESQL_BROKEN = StandIn(
    name="postgresql-broken",
    repository=f"{NAMESPACE}/postgresql-broken",
    tag=POSTGRESQL.tag,
    official="postgres",
    packages=(),
    version_package=POSTGRESQL.version_package,
    entrypoint=("docker-entrypoint-broken.sh",),
    cmd=POSTGRESQL.cmd,
    ports=POSTGRESQL.ports,
    env=POSTGRESQL.env,
    path=POSTGRESQL.path,
    stop_signal=POSTGRESQL.stop_signal,
    home=POSTGRESQL.home,
    setup="",
    variant_of=POSTGRESQL.name,
)

STANDINS: dict[str, StandIn] = {s.name: s for s in (POSTGRESQL, MARIADB, POSTGRESQL_BROKEN)}


def standin(name: str) -> StandIn:
    """The stand-in by name; UsageError listing the known ones otherwise."""
    try:
        return STANDINS[name]
    except KeyError:
        known = ", ".join(sorted(STANDINS))
        raise UsageError(f"no stand-in image {name!r}; known: {known}") from None
