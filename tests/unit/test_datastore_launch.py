"""The datastore run's launch: what the harness injects and where the guest pulls from."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from assembler.boottest.datastore_launch import (
    REGISTRY_ADDR,
    REGISTRY_PORT,
    DatastoreOptions,
    Launch,
    open_launch,
)
from assembler.boottest.harness import BootTestOptions, injected_files
from assembler.errors import UsageError
from assembler.oci.layout import read_image
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient


def launch_of(**kw: object) -> tuple[Launch, contextlib.ExitStack]:
    stack = contextlib.ExitStack()
    opts = DatastoreOptions(**{"spec": "postgresql:15", "use_registry": False, **kw})  # type: ignore[arg-type]
    return open_launch(opts, stack), stack


def files_of(launch: Launch) -> dict[str, str]:
    opts = BootTestOptions(image=Path("/nonexistent"))
    files = injected_files("guest-1", "ubuntu", opts, "rabbit://g:g@169.254.0.100:5672/", launch)
    return {f.path: f.content for f in files}


def test_no_registry_names_the_embedded_image_and_writes_no_daemon_json() -> None:
    launch, stack = launch_of()
    with stack:
        files = files_of(launch)
    assert launch.ref == "trove-test-double/postgresql:15" and launch.registry is None
    assert "/etc/docker/daemon.json" not in files
    info = files["/etc/trove/conf.d/guest_info.conf"]
    assert "datastore_manager=postgresql" in info and "datastore_version=15" in info
    assert "network_isolation=False" in info
    conf = files["/etc/trove/conf.d/trove-guestagent.conf"]
    # docker_image is a repository: the agent appends the datastore version as the tag.
    assert "[postgresql]\ndocker_image = trove-test-double/postgresql\n" in conf
    assert "state_change_wait_time = 900" in conf
    assert "container_registry" not in conf


@pytest.mark.registry
def test_the_harness_registry_holds_the_test_double_and_daemon_json_names_it() -> None:
    with contextlib.ExitStack() as stack:
        launch = open_launch(DatastoreOptions("postgresql:15"), stack)
        guest_registry = f"{REGISTRY_ADDR}:{REGISTRY_PORT}"
        assert launch.registry == guest_registry
        assert launch.repo == f"{guest_registry}/trove-test-double/postgresql"
        (forward,) = launch.forwards
        assert (forward.guest_addr, forward.guest_port, forward.host) == (
            REGISTRY_ADDR,
            REGISTRY_PORT,
            "127.0.0.1",
        )
        # What was pushed is there, under the digest the datastore-image check expects.
        host = f"127.0.0.1:{forward.host_port}"
        with RegistryClient(host) as client:
            served = client.manifest(Reference.parse(f"{host}/trove-test-double/postgresql:15"))
        assert served.digest == launch.pushed_digest
        files = files_of(launch)
    daemon = json.loads(files["/etc/docker/daemon.json"])
    assert daemon == {"insecure-registries": [guest_registry]}
    no_insecure = Launch(
        **{**launch.__dict__, "opts": DatastoreOptions("postgresql:15", insecure_registry=False)}
    )
    assert "/etc/docker/daemon.json" not in files_of(no_insecure)


def test_registry_credentials_reach_the_agent_config_only() -> None:
    from assembler.oci.credentials import Credentials

    launch, stack = launch_of()
    with stack:
        launch.registry = "169.254.0.102:5000"
        launch.credentials = Credentials("alice", "s3cret-pw")
        conf = files_of(launch)["/etc/trove/conf.d/trove-guestagent.conf"]
    assert "container_registry = 169.254.0.102:5000" in conf
    assert "container_registry_username = alice" in conf
    assert "container_registry_password = s3cret-pw" in conf
    assert "s3cret-pw" not in repr(launch.credentials)


def test_prepare_without_user_sends_no_user() -> None:
    launch, stack = launch_of(faults=("prepare-without-user",))
    with stack:
        kwargs = launch.prepare_kwargs(1024, "guest-1")
    assert kwargs["users"] == [] and kwargs["databases"][0]["_name"] == "trove_boot_db"
    launch, stack = launch_of()
    with stack:
        kwargs = launch.prepare_kwargs(1024, "guest-1")
    assert [u["_name"] for u in kwargs["users"]] == ["trove_boot"]
    assert kwargs["memory_mb"] == 1024 and isinstance(kwargs["config_contents"], str)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"spec": "oracle:19"}, "oracle"),
        ({"faults": ("nope",)}, "unknown fault"),
        ({"registry": "nohost", "use_registry": True}, "HOST:PORT"),
        ({"registry": "r:5000"}, "excludes"),
        ({"use_registry": True, "source": "/nonexistent/layout"}, "does not exist"),
    ],
)
def test_bad_datastore_options(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        launch_of(**kw)


def test_a_pushed_source_may_be_a_docker_archive(tmp_path: Path) -> None:
    from assembler.oci.layout import write_docker_archive
    from assembler.standin import standin_layout

    archive = tmp_path / "pg.tar"
    image = read_image(standin_layout("postgresql-broken"))
    write_docker_archive(image, ["x/y:1"], archive)
    assert read_image(archive).config.digest == image.config.digest


def test_the_harness_never_imports_trove() -> None:
    """trove's import brings eventlet, whose patched threads hang the harness's own: prepare's
    arguments are made in the child that casts it, from the plain ones the harness writes."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib; from pathlib import Path\n"
        "from assembler.boottest.harness import BootTestOptions, injected_files\n"
        "from assembler.boottest.datastore_launch import open_launch, DatastoreOptions\n"
        "with contextlib.ExitStack() as st:\n"
        "    l = open_launch(DatastoreOptions('mariadb:10.11', use_registry=False), st)\n"
        "    injected_files('g', 'u', BootTestOptions(image=Path('/x')), 'rabbit://a:b@c:1/', l)\n"
        "    l.prepare_args(1024, 'g'); l.query_args(90)\n"
        "print(sorted(m for m in ('trove', 'eventlet') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
