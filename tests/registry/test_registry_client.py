"""The registry client against a real docker-registry (distribution 2.8) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assembler.boottest.registry import Registry
from assembler.oci.credentials import Credentials
from assembler.oci.layout import pull, push, read_oci_layout
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient, RegistryError
from tests.unit.test_oci_layout import make_image

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry"),
]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


@pytest.fixture(scope="module")
def secured() -> Iterator[Registry]:
    with Registry(users={"alice": "secret"}) as r:
        yield r


def logged(registry: Registry, method: str, path: str) -> list[int]:
    """Statuses of the requests the registry logged (its access log lags a little)."""
    for _ in range(40):
        found = [s for m, p, s in registry.requests() if (m, p) == (method, path)]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_push_then_pull_gives_the_same_image(registry: Registry, tmp_path: Path) -> None:
    image = make_image(tmp_path)
    ref = Reference.parse(f"{registry.host}/trove-test-double/postgresql:15")
    with RegistryClient(registry.host) as client:
        digest = push(client, image, ref)
        assert digest == image.manifest_digest
        pulled = pull(client, ref, tmp_path / "pulled")
    assert pulled.manifest_digest == image.manifest_digest
    assert [d.digest for d in pulled.layers] == [d.digest for d in image.layers]
    again = read_oci_layout(tmp_path / "pulled", "15")
    assert again.read_blob(again.layers[0].digest) == image.read_blob(image.layers[0].digest)
    assert logged(registry, "GET", "/v2/trove-test-double/postgresql/manifests/15") == [200]
    # A second push uploads nothing: every blob is found by HEAD first.
    with RegistryClient(registry.host) as client:
        push(client, image, ref)
    uploads = [p for m, p, _ in registry.requests() if m == "POST"]
    assert len(uploads) == 2  # config and one layer, once


def test_pull_by_digest_and_a_second_tag_reuse_the_layout(
    registry: Registry, tmp_path: Path
) -> None:
    image = make_image(tmp_path, b"by digest\n")
    repo = f"{registry.host}/digest/test"
    with RegistryClient(registry.host) as client:
        push(client, image, Reference.parse(f"{repo}:a"))
        push(client, image, Reference.parse(f"{repo}:b"))
        pull(client, Reference.parse(f"{repo}@{image.manifest_digest}"), tmp_path / "l")
        before = len(registry.requests())
        pull(client, Reference.parse(f"{repo}:b"), tmp_path / "l")
    blob_gets = [p for m, p, _ in registry.requests()[before:] if m == "GET" and "/blobs/" in p]
    assert blob_gets == []  # the layout had them
    assert read_oci_layout(tmp_path / "l", "b").manifest_digest == image.manifest_digest


def test_missing_tag(registry: Registry) -> None:
    with RegistryClient(registry.host) as client, pytest.raises(RegistryError) as err:
        client.manifest(Reference.parse(f"{registry.host}/nothing/here:9"))
    assert str(err.value) == f"{registry.host} has no nothing/here:9"


def test_tampered_blob_is_refused_and_nothing_is_left(registry: Registry, tmp_path: Path) -> None:
    image = make_image(tmp_path, b"tamper me\n")
    ref = Reference.parse(f"{registry.host}/tamper/me:1")
    with RegistryClient(registry.host) as client:
        push(client, image, ref)
    hex_ = image.layers[0].digest.removeprefix("sha256:")
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"
    body = bytearray(data.read_bytes())
    body[10] ^= 0xFF
    data.write_bytes(bytes(body))
    dest = tmp_path / "blob"
    with (
        RegistryClient(registry.host) as client,
        pytest.raises(RegistryError, match="digest mismatch"),
    ):
        client.blob("tamper/me", image.layers[0].digest, dest)
    assert list(tmp_path.glob("*blob*")) == []
    with (
        RegistryClient(registry.host) as client,
        pytest.raises(RegistryError, match="digest mismatch"),
    ):
        pull(client, ref, tmp_path / "pulled")


def test_basic_login(secured: Registry, tmp_path: Path) -> None:
    image = make_image(tmp_path, b"secured\n")
    ref = Reference.parse(f"{secured.host}/private/db:1")
    with RegistryClient(secured.host, credentials=Credentials("alice", "secret")) as client:
        push(client, image, ref)
        assert client.manifest(ref).digest == image.manifest_digest


@pytest.mark.parametrize("who", [Credentials("alice", "wrong"), None])
def test_refused_login(secured: Registry, who: Credentials | None) -> None:
    ref = Reference.parse(f"{secured.host}/private/db:1")
    with (
        RegistryClient(secured.host, credentials=who) as client,
        pytest.raises(RegistryError) as err,
    ):
        client.manifest(ref)
    message = str(err.value)
    if who is None:
        assert message.startswith(f"registry {secured.host} requires a login for private/db")
    else:
        assert message == f"registry {secured.host} refused the login of alice"
        assert "wrong" not in message and "wrong" not in repr(client)


def test_unreachable_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with (
            RegistryClient(f"127.0.0.1:{port}", timeout=2) as client,
            pytest.raises(RegistryError) as err,
        ):
            client.manifest(Reference.parse(f"127.0.0.1:{port}/a/b:1"))
    assert str(err.value) == f"registry 127.0.0.1:{port} unreachable: connection refused"


def test_registry_stops_and_cleans_up() -> None:
    r = Registry()
    with r:
        pid, root = r.pid, r.root
        assert pid is not None and root is not None
        assert r.forward().option().endswith(f"TCP:127.0.0.1:{r.port}")
    assert not root.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
