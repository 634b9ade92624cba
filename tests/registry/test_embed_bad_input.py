"""A build asked to embed a datastore image it cannot get: one `error:` line, the README's exit
code, no image written and nothing half-fetched left in the cache. The registry is a real
docker-registry on loopback; the build stops before any appliance starts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assembler.boottest.registry import Registry
from assembler.oci.layout import push, read_image
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient
from assembler.standin import standin_layout

pytestmark = pytest.mark.registry


def build(
    base: Path, out: Path, embed: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
            "--base", str(base), "-o", str(out), "--no-dev-mode", "--datastore-image", embed]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=300, check=False
    )


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> dict[str, str]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    cfg = tmp_path / "docker"
    cfg.mkdir(exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(cfg)}


def assert_refused(
    proc: subprocess.CompletedProcess[str], code: int, words: str, out: Path, cache: Path
) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not out.with_name(out.name + ".manifest.json").exists()
    # Nothing half-fetched: no partial blob, and no image named in any layout's index.
    images = cache / "trove-image-assembler" / "images"
    assert not list(images.rglob("*.part")), list(images.rglob("*"))
    for index in images.rglob("index.json"):
        assert json.loads(index.read_text()).get("manifests", []) == [], index.read_text()


@pytest.fixture(scope="module")
def registry() -> object:
    with Registry(users={"alice": "right-password"}) as reg:
        client = RegistryClient(reg.host, credentials=_creds("alice", "right-password"))
        push(
            client,
            read_image(standin_layout("postgresql-broken")),
            Reference.parse(f"{reg.host}/db/pg:15"),
        )
        yield reg


def _push_tampered(registry: Registry, tmp_path: Path) -> None:
    """A small image of its own whose layer the registry then serves with other bytes."""
    import hashlib
    import io
    import tarfile

    from assembler.oci.image import image_from_files

    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    diff_id = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    image = image_from_files(config, [layer], tmp_path)
    client = RegistryClient(registry.host, credentials=_creds("alice", "right-password"))
    push(client, image, Reference.parse(f"{registry.host}/db/tiny:1"))
    hexdigest = image.layers[0].digest.removeprefix("sha256:")
    stored = (
        registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    )
    stored.write_bytes(stored.read_bytes().replace(b"hello", b"HELLO"))


def _creds(user: str, password: str):  # type: ignore[no-untyped-def]
    from assembler.oci.credentials import Credentials

    return Credentials(user, password)


@pytest.mark.parametrize(
    ("what", "code", "words"),
    [
        ("unreachable", 1, "unreachable"),
        ("bad-password", 1, "refused the login of alice"),
        ("no-login", 1, "requires a login"),
        ("missing-tag", 1, "has no db/pg:16"),
        ("digest-mismatch", 1, "digest"),
        ("malformed-ref", 2, "malformed image reference"),
        ("not-an-archive", 2, "not a docker save archive or OCI layout"),
    ],
)
def test_an_image_that_cannot_be_had_fails_the_build_cleanly(
    what: str, code: int, words: str, registry: Registry, debian_base: Path, tmp_path: Path
) -> None:
    host = registry.host
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache), **docker_config(tmp_path, host, "alice", "right-password")}
    if what == "digest-mismatch":
        _push_tampered(registry, tmp_path)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tar")
    embed = {
        "unreachable": "127.0.0.1:9/db/pg:15=db/pg:15",
        "bad-password": f"{host}/db/pg:15=db/pg:15",
        "no-login": f"{host}/db/pg:15=db/pg:15",
        "missing-tag": f"{host}/db/pg:16=db/pg:16",
        "digest-mismatch": f"{host}/db/tiny:1=db/tiny:1",
        "malformed-ref": "db/PG:15",
        "not-an-archive": f"docker-archive:{junk}=db/pg:15",
    }[what]
    if what == "bad-password":
        env.update(docker_config(tmp_path, host, "alice", "wrong-password"))
    if what == "no-login":
        env["DOCKER_CONFIG"] = str(tmp_path / "empty")
    out = tmp_path / "out.qcow2"
    proc = build(debian_base, out, embed, env)
    assert_refused(proc, code, words, out, cache)
    # No credential ever reaches the output, even with --debug.
    assert "right-password" not in proc.stderr and "wrong-password" not in proc.stderr


def test_debug_never_shows_the_password(
    registry: Registry, debian_base: Path, tmp_path: Path
) -> None:
    env = {
        "XDG_CACHE_HOME": str(tmp_path / "c"),
        **docker_config(tmp_path, registry.host, "alice", "wrong-password"),
    }
    argv = [sys.executable, "-m", "assembler", "--debug", "--guest-os", "debian", "--release", "bookworm",
            "--base", str(debian_base), "-o", str(tmp_path / "o.qcow2"), "--no-dev-mode",
            "--datastore-image", f"{registry.host}/db/pg:15=db/pg:15"]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=300, check=False
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "wrong-password" not in proc.stderr
    assert base64.b64encode(b"alice:wrong-password").decode() not in proc.stderr
