"""`assembler publish` against a real Glance (tests/publish/glance_service.py) and real
`trove-manage` on an SQLite Trove database, then Trove's own image lookup (`get_image_id`).

The images are real builds: the session's qcow2 build and the same build written in every other
format (its layers cached: each is one convert), so each is a different file Glance's format
inspection reads. No mock anywhere; the one stand-in is the key manager (Barbican cannot run
here), and Keystone's part is played by the test Glance's identity middleware.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from assembler.formats import FORMATS, ImageFormat
from assembler.manifest import manifest_path
from tests.builds import Built, build
from tests.publish.certs import signing_pair
from tests.publish.glance_service import Glance

pytestmark = pytest.mark.publish
BIN = Path(sys.executable).parent  # trove-manage comes with the venv's trove

EXT = {ImageFormat.QCOW2: ".qcow2", ImageFormat.RAW: ".raw", ImageFormat.VMDK: ".vmdk",
       ImageFormat.VHD: ".vhd", ImageFormat.VHDX: ".vhdx"}  # fmt: skip


@pytest.fixture(scope="session")
def formats(qcow2_custom: Built, debian_base: Path, images_dir: Path) -> dict[str, Built]:
    """The qcow2 build, and the same build in every other format we write (each one convert:
    the layers are cached). The scenarios use the small ones (qcow2, vmdk: ~0.4 GB)."""
    out: dict[str, Built] = {"qcow2": qcow2_custom}
    for fmt in ImageFormat:
        if fmt is not ImageFormat.QCOW2:
            target = images_dir / f"publish{EXT[fmt]}"
            args = qcow2_custom.args_to(target)
            out[str(fmt)] = build(
                debian_base, target, *args[args.index("-o") + 2 :], env=qcow2_custom.env
            )
    return out


def publish(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assembler", "publish", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        # trove-manage on PATH, as on a controller
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})},
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr
    return errors[0]


class Api:
    """Glance read directly (not through the code under test) to judge what publish did."""

    def __init__(self, glance: Glance) -> None:
        self.glance = glance

    def images(self, **params: Any) -> list[dict[str, Any]]:
        r = requests.get(
            f"{self.glance.url}/v2/images", params={"limit": 1000, **params}, timeout=30
        )
        r.raise_for_status()
        return list(r.json()["images"])

    def named(self, name: str) -> list[dict[str, Any]]:
        return self.images(name=name)

    def get(self, image_id: str) -> dict[str, Any]:
        r = requests.get(f"{self.glance.url}/v2/images/{image_id}", timeout=30)
        r.raise_for_status()
        return dict(r.json())


@pytest.fixture
def api(glance: Glance) -> Api:
    return Api(glance)


def trove_takes(glance: Glance, tags: list[str]) -> str:
    """Trove's own lookup (trove/common/glance.py) through glanceclient, as the taskmanager
    makes it for a datastore version with image tags."""
    from glanceclient import Client
    from trove.common.glance import get_image_id

    client = Client("2", endpoint=glance.url, token="test")
    return str(get_image_id(client, None, tags))


def image_id_of(out: str, verb: str) -> str:
    for line in out.splitlines():
        if line.startswith(f"{verb} "):
            return line.split()[1]
    raise AssertionError(f"no '{verb}' line in:\n{out}")


@pytest.mark.parametrize("fmt", [str(f) for f in ImageFormat])
def test_every_format_we_write_is_accepted_by_glance(
    fmt: str, formats: dict[str, Built], glance_cloud: str, api: Api
) -> None:
    built = formats[fmt]
    name = f"fmt-{fmt}"
    proc = publish(
        str(built.image), "--datastore", f"fmt{fmt}:1", "--os-cloud", glance_cloud, "--name", name
    )
    assert proc.returncode == 0, proc.stderr
    (image,) = api.named(name)
    assert image["status"] == "active"
    assert image["disk_format"] == FORMATS[ImageFormat(fmt)].glance_disk_format
    assert image["container_format"] == "bare" and image["visibility"] == "private"
    assert sorted(image["tags"]) == sorted(["trove", f"fmt{fmt}"])
    assert image["size"] == built.image.stat().st_size
    assert (image["os_distro"], image["os_version"], image["hw_disk_bus"]) == (
        "debian",
        "12",
        "virtio",
    )
    assert image["hw_firmware_type"] == "bios"  # hybrid (bios and uefi): Nova's default
    assert image["trove_assembler_manifest_sha256"] and image["trove_assembler_version"]
    assert f"uploaded {image['id']}" in proc.stdout
    assert f"Trove takes {image['id']}" in proc.stdout
    # What Glance stored is what was built.
    assert image["os_hash_value"] == sha512(built.image)
    assert sha512(glance_file(api.glance, image["id"])) == image["os_hash_value"]


def sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def glance_file(glance: Glance, image_id: str) -> Path:
    return glance.images_dir / image_id


@pytest.fixture
def trove_db(tmp_path: Path) -> Path:
    """Trove's database (SQLite) made by trove-manage as on a controller; its trove.conf."""
    conf = tmp_path / "trove.conf"
    conf.write_text(f"[DEFAULT]\n[database]\nconnection = sqlite:///{tmp_path}/trove.sqlite\n")
    subprocess.run([str(BIN / "trove-manage"), "--config-file", str(conf), "db_sync"],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    return conf


def trove_rows(conf: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    db = conf.read_text().split("sqlite:///")[1].strip()
    with sqlite3.connect(db) as c:
        return list(c.execute(sql).fetchall())


@dataclass
class Cloud:
    """A Glance of the test's own (its images are the test's alone) and its clouds.yaml."""

    glance: Glance
    api: Api
    args: tuple[str, ...]
    env: dict[str, str]

    def publish(self, *args: str) -> subprocess.CompletedProcess[str]:
        return publish(*args, *self.args, env=self.env)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    with Glance(tmp_path / "glance") as glance:
        env = {"OS_CLIENT_CONFIG_FILE": str(glance.write_clouds_yaml())}
        yield Cloud(glance, Api(glance), ("--os-cloud", glance.cloud), env)


def test_publish_rotate_reuse_and_roll_back_as_trove_sees_it(
    formats: dict[str, Built], cloud: Cloud, trove_db: Path
) -> None:
    pg = ("--datastore", "postgresql:15", "--tag", "rotation")
    tags = ["trove", "postgresql", "rotation"]
    first = cloud.publish(
        str(formats["vmdk"].image), *pg, "--register", "--default", "--trove-config", str(trove_db)
    )
    assert first.returncode == 0, first.stderr
    first_id = image_id_of(first.stdout, "uploaded")
    assert trove_takes(cloud.glance, tags) == first_id
    # The datastore version as trove-manage wrote it: found by tags, active, the default, rules in.
    (version,) = trove_rows(
        trove_db,
        "select id, name, manager, image_id, image_tags, active, version from datastore_versions",
    )
    # No image id (trove-manage stores ""): Trove looks the image up by its tags.
    assert version[1:] == ("15", "postgresql", "", "trove,postgresql,rotation", 1, "15")
    assert trove_rows(
        trove_db, "select default_version_id from datastores where name='postgresql'"
    ) == [(version[0],)]
    (count,) = trove_rows(
        trove_db,
        f"select count(*) from datastore_configuration_parameters where datastore_version_id='{version[0]}'",
    )[0]
    assert count > 100  # postgresql's validation-rules.json from the trove package

    second = cloud.publish(str(formats["qcow2"].image), *pg)
    assert second.returncode == 0, second.stderr
    second_id = image_id_of(second.stdout, "uploaded")
    assert f"untagged {first_id}" in second.stdout
    assert trove_takes(cloud.glance, tags) == second_id
    old = cloud.api.get(first_id)
    assert old["status"] == "active" and not set(tags) & set(old["tags"])
    assert old["trove_assembler_state_postgresql_15"] == "retired"
    assert old["trove_assembler_retired_postgresql_15"].split()[1:] == ["untag", second_id]
    # Not asked to register: the commands are printed.
    assert "openstack datastore version create 15 postgresql postgresql ''" in second.stdout

    # The same bytes again, registered again without --default: reused, not uploaded twice;
    # the version is updated and stays the datastore's default.
    before = len(cloud.api.images())
    again = cloud.publish(
        str(formats["qcow2"].image), *pg, "--register", "--trove-config", str(trove_db)
    )
    assert again.returncode == 0, again.stderr
    assert trove_rows(
        trove_db, "select default_version_id from datastores where name='postgresql'"
    ) == [(version[0],)]
    assert f"reused {second_id}" in again.stdout and "uploaded" not in again.stdout
    assert len(cloud.api.images()) == before
    assert trove_takes(cloud.glance, tags) == second_id

    # A rollback must name the tags the version was published with.
    untagged = cloud.publish("--rollback", "--datastore", "postgresql:15")
    assert untagged.returncode == 2 and "--tag" in one_error_line(untagged)
    assert trove_takes(cloud.glance, tags) == second_id
    # Rolled back from what Glance holds alone: no local state is read.
    back = publish(
        "--rollback",
        *pg,
        *cloud.args,
        env={**cloud.env, "XDG_CACHE_HOME": "/nonexistent", "HOME": "/nonexistent"},
    )
    assert back.returncode == 0, back.stderr
    assert f"restored {first_id}" in back.stdout and f"untagged {second_id}" in back.stdout
    assert trove_takes(cloud.glance, tags) == first_id
    # Rollbacks walk back through publishes, never undo each other: nothing is older here.
    again_back = cloud.publish("--rollback", *pg)
    assert again_back.returncode == 1 and "nothing to roll back to" in one_error_line(again_back)
    assert trove_takes(cloud.glance, tags) == first_id
    # And forward again: publishing the second restores it and retires the first.
    forward = cloud.publish(str(formats["qcow2"].image), *pg)
    assert forward.returncode == 0, forward.stderr
    assert trove_takes(cloud.glance, tags) == second_id


def test_one_image_for_two_datastores_retired_for_one_only(
    formats: dict[str, Built], cloud: Cloud
) -> None:
    pg, maria = ("--datastore", "postgresql:15"), ("--datastore", "mariadb:10.11")
    first = cloud.publish(str(formats["vmdk"].image), *pg)
    assert first.returncode == 0, first.stderr
    shared = image_id_of(first.stdout, "uploaded")
    both = cloud.publish(str(formats["vmdk"].image), *maria)
    assert both.returncode == 0, both.stderr
    assert f"reused {shared}" in both.stdout
    assert (
        trove_takes(cloud.glance, ["trove", "mariadb"])
        == trove_takes(cloud.glance, ["trove", "postgresql"])
        == shared
    )
    # A new image for PostgreSQL, retired by deactivation: the shared one stays MariaDB's.
    new = cloud.publish(str(formats["qcow2"].image), *pg, "--retire", "deactivate")
    assert new.returncode == 0, new.stderr
    assert "another version's current image" in new.stdout
    image = cloud.api.get(shared)
    assert image["status"] == "active" and sorted(image["tags"]) == ["mariadb", "trove"]
    assert trove_takes(cloud.glance, ["trove", "mariadb"]) == shared
    assert trove_takes(cloud.glance, ["trove", "postgresql"]) == image_id_of(new.stdout, "uploaded")


def test_deactivate_and_keep(formats: dict[str, Built], cloud: Cloud) -> None:
    common = ("--datastore", "mariadb:10.11", "--retire", "deactivate", "--keep", "1")
    ids = []
    for fmt in ("vmdk", "vhd", "qcow2"):
        proc = cloud.publish(str(formats[fmt].image), *common)
        assert proc.returncode == 0, proc.stderr
        ids.append(image_id_of(proc.stdout, "uploaded"))
    vmdk, vhd, qcow2 = ids
    assert trove_takes(cloud.glance, ["trove", "mariadb"]) == qcow2
    assert cloud.api.get(vhd)["status"] == "deactivated"  # retired, kept (--keep 1)
    assert "mariadb" in cloud.api.get(vhd)["tags"]  # deactivated: its tags stay
    assert vmdk not in [i["id"] for i in cloud.api.images()]  # the older retired one: deleted
    back = cloud.publish("--rollback", *common)
    assert back.returncode == 0, back.stderr
    assert f"restored {vhd}" in back.stdout and f"deactivated {qcow2}" in back.stdout
    assert cloud.api.get(vhd)["status"] == "active"
    assert trove_takes(cloud.glance, ["trove", "mariadb"]) == vhd


def self_signed(tmp_path: Path) -> tuple[Path, Any]:
    """A signing key as a PEM file, and its certificate."""
    key, cert = signing_pair()
    path = tmp_path / f"key-{time.monotonic_ns()}.pem"
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.write_bytes(pem)
    return path, cert


def test_a_signed_image_is_verified_by_glance(
    formats: dict[str, Built], glance_cloud: str, glance: Glance, api: Api, tmp_path: Path
) -> None:
    key, cert = self_signed(tmp_path)
    cert_id = glance.store_certificate(cert)

    def signed(image: Path, name: str, key: Path) -> subprocess.CompletedProcess[str]:
        ds = ("--datastore", "signed:1", "--os-cloud", glance_cloud, "--name", name)
        return publish(str(image), *ds, "--sign-key", str(key), "--sign-cert-uuid", cert_id)

    ok = signed(formats["qcow2"].image, "signed", key)
    assert ok.returncode == 0, ok.stderr
    (image,) = api.named("signed")
    assert image["status"] == "active"
    assert image["img_signature_certificate_uuid"] == cert_id
    assert (image["img_signature_key_type"], image["img_signature_hash_method"]) == (
        "RSA-PSS",
        "SHA-256",
    )
    # A key that is not the certificate's: Glance refuses the data; nothing is left.
    other, _ = self_signed(tmp_path)
    bad = signed(formats["vhd"].image, "badly-signed", other)
    assert bad.returncode == 1
    assert "ignature" in one_error_line(bad)
    assert api.named("badly-signed") == []


def test_bad_input_is_one_line_and_leaves_nothing(
    formats: dict[str, Built], cloud: Cloud, tmp_path: Path
) -> None:
    image = formats["qcow2"].image
    ds = ("--datastore", "badinput:1")
    # A manifest missing, or no longer matching the file: exit 2, before any request.
    lone = tmp_path / "lone.qcow2"
    shutil.copy(image, lone)
    proc = cloud.publish(str(lone), *ds)
    assert proc.returncode == 2 and "has no manifest" in one_error_line(proc)
    shutil.copy(manifest_path(image), manifest_path(lone))
    with lone.open("r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = cloud.publish(str(lone), *ds)
    assert proc.returncode == 2 and "no longer matches its manifest" in one_error_line(proc)
    # A signing key that is no key: 2.
    (tmp_path / "key.pem").write_text("not a key")
    proc = cloud.publish(
        str(image), *ds, "--sign-key", str(tmp_path / "key.pem"), "--sign-cert-uuid", "x"
    )
    assert proc.returncode == 2 and "--sign-key" in one_error_line(proc)
    # No such cloud in clouds.yaml: 2.
    proc = publish(str(image), *ds, "--os-cloud", "no-such-cloud", env=cloud.env)
    assert proc.returncode == 2 and "cloud" in one_error_line(proc)
    # Glance refusing (403): 1, nothing made.
    with cloud.glance.refusing_writes():
        proc = cloud.publish(str(image), *ds)
    assert proc.returncode == 1 and "403" in one_error_line(proc)
    # Glance unreachable: 1.
    gone = {"gone": {"auth_type": "none", "auth": {"endpoint": "http://127.0.0.1:9"}}}
    (tmp_path / "gone.yaml").write_text(json.dumps({"clouds": gone}))
    proc = publish(
        str(image),
        *ds,
        "--os-cloud",
        "gone",
        env={"OS_CLIENT_CONFIG_FILE": str(tmp_path / "gone.yaml")},
    )
    assert proc.returncode == 1 and "unreachable" in one_error_line(proc)
    assert cloud.api.images() == []  # nothing half-made along the way


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_publish(cloud: Cloud, image: Path) -> subprocess.Popen[str]:
    """A publish whose upload is under way (Glance says `saving`)."""
    argv = [
        sys.executable,
        "-m",
        "assembler",
        "publish",
        str(image),
        "--datastore",
        "cut:1",
        *cloud.args,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **cloud.env},
    )
    saving = lambda: [i for i in cloud.api.images() if i["status"] == "saving"]  # noqa: E731
    wait_for(saving, 120, "the upload to start")
    return proc


def test_an_interrupted_upload_leaves_no_image(formats: dict[str, Built], cloud: Cloud) -> None:
    proc = start_publish(cloud, formats["vhd"].image)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert cloud.api.images() == []


def test_a_broken_connection_leaves_a_queued_image_the_next_publish_removes(
    formats: dict[str, Built], cloud: Cloud
) -> None:
    vhd = formats["vhd"].image
    proc = start_publish(cloud, vhd)
    cloud.glance.stop()  # Glance goes away mid-upload: the connection breaks
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    cloud.glance.start()  # the same database and store, on a new port
    cloud.env["OS_CLIENT_CONFIG_FILE"] = str(cloud.glance.write_clouds_yaml())
    (left,) = cloud.api.images()
    assert left["status"] in ("queued", "saving")
    again = cloud.publish(str(vhd), "--datastore", "cut:1")
    assert again.returncode == 0, again.stderr
    assert f"removed {left['id']}" in again.stdout
    (image,) = cloud.api.images()
    assert image["status"] == "active" and image["id"] != left["id"]
