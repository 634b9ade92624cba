"""The boot test's datastore run: what Trove's control plane adds to a launch for a database.

A private registry holding the datastore image (or an operator's, or none when the image
embeds it), the files the taskmanager injects for it (docker's daemon.json, the agent's
datastore section), a port the host reaches the database on, and the prepare call's arguments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler.boottest import datastore
from assembler.boottest.instance import InjectedFile
from assembler.boottest.rabbit import free_ports
from assembler.boottest.registry import Registry
from assembler.boottest.vm import Forward, Published
from assembler.errors import UsageError
from assembler.oci import credentials as oci_credentials
from assembler.oci.layout import push, read_image
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient

log = logging.getLogger(__name__)

# Where the guest reaches the registry: inside its user network, as the bus.
REGISTRY_ADDR, REGISTRY_PORT = "169.254.0.102", 5000
# What the harness's prepare creates, and the client then uses.
DB_NAME, DB_USER = "trove_boot_db", "trove_boot"
# Faults of the run, for the harness's own negative tests.
FAULTS = ("prepare-without-user",)
TEST_DOUBLE = "test-double:"


@dataclass(frozen=True)
class DatastoreOptions:
    spec: str  # MANAGER:VERSION, e.g. postgresql:15
    # An operator's registry (HOST:PORT) instead of the harness's own.
    registry: str | None = None
    use_registry: bool = True  # False: none at all; the image must embed the datastore image
    # What the harness pushes to its registry: a `docker save` archive, an OCI layout, or
    # test-double:NAME (built from Debian's packages, see assembler/standin). Default: the
    # manager's test double.
    source: str | None = None
    docker_image: str | None = None  # the repository, as Trove's [<manager>] docker_image
    insecure_registry: bool = True  # Trove's docker_insecure_registries, in daemon.json
    wait: float = 900.0  # the agent's state_change_wait_time, raised for emulation
    faults: tuple[str, ...] = ()


@dataclass
class Launch:
    manager: str
    version: str
    repo: str  # the agent's docker_image: a repository, no tag
    registry: str | None  # as the guest names it in daemon.json; None: no registry
    pushed_digest: str | None
    published: Published
    opts: DatastoreOptions
    forwards: list[Forward] = field(default_factory=list)
    credentials: oci_credentials.Credentials | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.version}"

    def injected(self, owner: str) -> tuple[InjectedFile, ...]:
        """daemon.json as the taskmanager injects it for docker_insecure_registries."""
        if self.registry is None or not self.opts.insecure_registry:
            return ()
        body = json.dumps({"insecure-registries": [self.registry]}) + "\n"
        return (InjectedFile("/etc/docker/daemon.json", body, "root:root", "0644"),)

    def agent_conf(self) -> str:
        """The agent's config lines beyond the bus: its datastore section and the registry login."""
        lines = [f"\n[{self.manager}]", f"docker_image = {self.repo}"]
        if self.credentials is not None and self.registry is not None:
            lines += [
                "\n[guest_agent]",
                f"container_registry = {self.registry}",
                f"container_registry_username = {self.credentials.username}",
                f"container_registry_password = {self.credentials.password}",
            ]
        return "\n".join(lines) + "\n"

    def prepare_args(self, memory_mb: int, instance_id: str) -> dict[str, Any]:
        """datastore.prepare_kwargs' arguments: the child that casts prepare makes them into
        prepare's (trove's classes and templates stay out of the harness's process)."""
        users = "prepare-without-user" not in self.opts.faults
        return {
            "manager": self.manager,
            "version": self.version,
            "memory_mb": memory_mb,
            "database": DB_NAME,
            "user": DB_USER if users else None,
            "password": self.password,
            "instance_id": instance_id,
        }

    def prepare_kwargs(self, memory_mb: int, instance_id: str) -> dict[str, Any]:
        return datastore.prepare_kwargs(**self.prepare_args(memory_mb, instance_id))

    def query_args(self, timeout: float) -> dict[str, Any]:
        """What the child's query_round_trip takes: the host's end of the database's forward."""
        return {
            "host": "127.0.0.1",
            "port": self.published.host_port,
            "user": DB_USER,
            "password": self.password,
            "database": DB_NAME,
            "timeout": timeout,
        }


def _registry_source(opts: DatastoreOptions, manager: str) -> Path:
    source = opts.source or f"{TEST_DOUBLE}{manager}"
    if source.startswith(TEST_DOUBLE):
        from assembler.standin import standin_layout

        return standin_layout(source.removeprefix(TEST_DOUBLE))
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"--datastore-source {path} does not exist")
    return path


def open_launch(opts: DatastoreOptions, stack: contextlib.ExitStack) -> Launch:
    """Parse the datastore, start (or name) its registry and push its image there."""
    manager, version = datastore.parse_datastore(opts.spec)
    unknown = [f for f in opts.faults if f not in FAULTS]
    if unknown:
        raise UsageError(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULTS)}")
    (db_port,) = free_ports(1)
    published = Published(db_port, datastore.DATASTORES[manager].port)
    repository = opts.docker_image or datastore.DATASTORES[manager].test_double
    if not opts.use_registry:
        if opts.registry or opts.source:
            raise UsageError("--no-registry excludes --registry and --datastore-source")
        return Launch(manager, version, repository, None, None, published, opts)
    guest_registry = f"{REGISTRY_ADDR}:{REGISTRY_PORT}"
    repo = f"{guest_registry}/{repository}"
    if opts.registry:
        host, _, port = opts.registry.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--registry must be HOST:PORT, not {opts.registry!r}")
        creds = oci_credentials.lookup(opts.registry)
        forward = Forward(REGISTRY_ADDR, REGISTRY_PORT, int(port), host)
        pushed = None
        if opts.source:
            client = RegistryClient(opts.registry, credentials=creds)
            pushed = _push(
                client, _registry_source(opts, manager), opts.registry, repository, version
            )
        launch = Launch(manager, version, repo, guest_registry, pushed, published, opts, [forward])
        launch.credentials = creds
        return launch
    registry = stack.enter_context(Registry())
    client = RegistryClient(registry.host)
    pushed = _push(client, _registry_source(opts, manager), registry.host, repository, version)
    forward = registry.forward(REGISTRY_ADDR, REGISTRY_PORT)
    return Launch(manager, version, repo, guest_registry, pushed, published, opts, [forward])


def _push(client: RegistryClient, source: Path, host: str, repository: str, tag: str) -> str:
    image = read_image(source)
    digest = push(client, image, Reference.parse(f"{host}/{repository}:{tag}"))
    log.info("pushed %s to %s/%s:%s (%s)", source, host, repository, tag, digest)
    return digest
