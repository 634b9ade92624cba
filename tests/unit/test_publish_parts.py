"""The pure parts of `assembler publish`: what Glance is told, which image Trove takes, the
registration commands, the signature. Glance itself is in tests/publish."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from assembler.errors import UsageError
from assembler.formats import FORMATS, ImageFormat
from assembler.manifest import manifest_path
from assembler.publish import register, rotation, signing
from assembler.publish.glance import Image
from assembler.publish.hashing import digests
from assembler.publish.spec import (
    PROP_MANIFEST,
    SpecOptions,
    image_spec,
    parse_datastore,
    read_manifest,
    tags_for,
)

MYSQL = parse_datastore("mysql:8.4", None)


def built(tmp_path: Path, fmt: str = "qcow2", **changes: Any) -> Path:
    image = tmp_path / f"guest.{fmt}"
    image.write_bytes(b"image bytes" * 100)
    doc: dict[str, Any] = {
        "tool": {"name": "trove-image-assembler", "version": "0.1.0"},
        "inputs": {"guest_os": "ubuntu", "release": "jammy", "dev_mode": False},
        "firmware": ["bios", "uefi"],
        "output": {
            "format": fmt,
            "size": image.stat().st_size,
            "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
            "built_at": "2026-12-03T10:11:12+00:00",
        },
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        doc[section] = value if not field else {**doc[section], field: value}
    manifest_path(image).write_text(json.dumps(doc))
    return image


def spec_of(image: Path, **opts: Any) -> Any:
    return image_spec(image, read_manifest(image), SpecOptions(MYSQL, **opts))


def test_the_image_as_the_original_document_registers_it(tmp_path: Path) -> None:
    image = built(tmp_path)
    spec = spec_of(image)
    body = spec.body()
    assert body["name"] == "trove-guest-ubuntu-jammy-20261203"
    assert (body["disk_format"], body["container_format"]) == ("qcow2", "bare")
    assert body["visibility"] == "private"
    assert body["tags"] == ["trove", "mysql"]
    assert body["os_distro"] == "ubuntu" and body["os_version"] == "22.04"
    assert body["hw_disk_bus"] == "virtio"
    assert body["hw_firmware_type"] == "bios"  # hybrid: Nova's default unless asked
    assert body["trove_assembler_state_mysql_8_4"] == "current"
    assert body["trove_assembler_tags_mysql_8_4"] == "trove,mysql"
    assert body[PROP_MANIFEST] == hashlib.sha256(manifest_path(image).read_bytes()).hexdigest()
    assert all(isinstance(v, str) for k, v in body.items() if k != "tags")


def test_a_dev_image_of_debian_is_named_so(tmp_path: Path) -> None:
    image = built(tmp_path, inputs={"guest_os": "debian", "release": "bookworm", "dev_mode": True})
    spec = spec_of(image)
    assert spec.name == "trove-guest-debian-bookworm-dev-20261203"
    assert spec.properties["os_distro"] == "debian" and spec.properties["os_version"] == "12"
    assert spec_of(image, name="mine").name == "mine"


@pytest.mark.parametrize("fmt", list(ImageFormat))
def test_each_format_gets_glance_s_disk_format(tmp_path: Path, fmt: ImageFormat) -> None:
    spec = spec_of(built(tmp_path, str(fmt)))
    glance_calls_it = {"qcow2": "qcow2", "raw": "raw", "vmdk": "vmdk", "vhd": "vhd", "vhdx": "vhdx"}
    assert spec.disk_format == glance_calls_it[str(fmt)]
    assert FORMATS[ImageFormat.VHD].qemu_driver == "vpc"  # what qemu-img calls Glance's vhd


def test_firmware_from_the_manifest(tmp_path: Path) -> None:
    hybrid = built(tmp_path)
    assert spec_of(hybrid, firmware="uefi").properties["hw_firmware_type"] == "uefi"
    uefi = built(tmp_path, firmware=["uefi"])  # the same file, its manifest rewritten
    assert spec_of(uefi).properties["hw_firmware_type"] == "uefi"
    with pytest.raises(UsageError, match="boots only with uefi"):
        spec_of(uefi, firmware="bios")
    none = built(tmp_path, firmware=[])
    with pytest.raises(UsageError, match="no firmware"):
        spec_of(none)


def test_a_manifest_missing_or_not_ours_is_refused(tmp_path: Path) -> None:
    image = built(tmp_path)
    manifest_path(image).write_text("{not json")
    with pytest.raises(UsageError, match="cannot read the manifest"):
        read_manifest(image)
    manifest_path(image).write_text('{"inputs": {}}')
    with pytest.raises(UsageError, match="not one of ours"):
        read_manifest(image)
    manifest_path(image).unlink()
    with pytest.raises(UsageError, match="has no manifest"):
        read_manifest(image)
    incomplete = built(tmp_path, output={"format": "qcow2"})
    with pytest.raises(UsageError, match="incomplete"):
        spec_of(incomplete)


def test_datastore_and_tags_as_trove_takes_them() -> None:
    assert parse_datastore("postgresql:15", None).manager == "postgresql"
    assert parse_datastore("percona:8.0", "mysql").manager == "mysql"
    for bad in ("mysql", "mysql:", ":8.4", "My SQL:8"):
        with pytest.raises(UsageError):
            parse_datastore(bad, None)
    assert tags_for(MYSQL, ("mysql", "prod")) == ("trove", "mysql", "prod")
    with pytest.raises(UsageError, match="at most 5"):
        tags_for(MYSQL, ("a", "b", "c", "d"))
    with pytest.raises(UsageError, match="at most 20"):
        tags_for(MYSQL, ("x" * 21,))


def test_digests_in_one_pass(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40000
    (tmp_path / "f").write_bytes(data)
    d = digests(tmp_path / "f")
    assert d.size == len(data)
    assert d.md5 == hashlib.md5(data).hexdigest()
    assert d.sha512 == hashlib.sha512(data).hexdigest()
    assert d.sha256_raw == hashlib.sha256(data).digest()


def test_the_signature_verifies_over_the_image_bytes(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"the image" * 1000
    props = signing.signature_properties(key, hashlib.sha256(data).digest(), "cert-1")
    assert props["img_signature_hash_method"] == "SHA-256"
    assert props["img_signature_key_type"] == "RSA-PSS"
    assert props["img_signature_certificate_uuid"] == "cert-1"
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    key.public_key().verify(base64.b64decode(props["img_signature"]), data, pss, hashes.SHA256())
    # What cursive does: the digest prehashed, the same signature.
    digest = hashlib.sha256(data).digest()
    key.public_key().verify(
        base64.b64decode(props["img_signature"]), digest, pss, utils.Prehashed(hashes.SHA256())
    )
    (tmp_path / "not-a-key.pem").write_text("hello")
    with pytest.raises(UsageError, match="not a PEM private key"):
        signing.load_key(tmp_path / "not-a-key.pem")
    with pytest.raises(UsageError, match="--sign-key"):
        signing.load_key(tmp_path / "missing.pem")


def image(
    id: str, created: str, tags: tuple[str, ...] = (), status: str = "active", **props: str
) -> Image:
    return Image(id, id, status, tags, created, 1, None, None, None, "qcow2", dict(props))


def test_trove_takes_the_newest_active_image_with_every_tag() -> None:
    tags = ("trove", "mysql")
    images = [
        image("old", "2026-01-01T00:00:00Z", tags),
        image("new", "2026-02-01T00:00:00Z", tags),
        image("newest-but-one-tag", "2026-03-01T00:00:00Z", ("trove",)),
        image("newest-deactivated", "2026-03-02T00:00:00Z", tags, status="deactivated"),
    ]
    chosen = rotation.chosen(images, tags)
    assert chosen is not None and chosen.id == "new"
    assert rotation.chosen(images[2:], tags) is None


def test_keep_prunes_the_oldest_retirements() -> None:
    key = MYSQL.retired_key
    retired = [
        image(f"r{i}", "2026-01-01T00:00:00Z", **{key: f"2026-01-0{i}T00:00:00 untag x"})
        for i in range(1, 5)
    ]
    assert [i.id for i in rotation.to_prune(retired, MYSQL, 2)] == ["r2", "r1"]
    assert rotation.to_prune(retired, MYSQL, None) == []
    assert [i.id for i in rotation.to_prune(retired, MYSQL, 0)] == ["r4", "r3", "r2", "r1"]
    # Another version's records are not this one's.
    other = parse_datastore("postgresql:15", None)
    assert rotation.to_prune(retired, other, 0) == []


def test_an_image_current_for_another_version_keeps_that_version_s_tags() -> None:
    pg = parse_datastore("postgresql:15", None)
    shared = image(
        "shared", "2026-01-01T00:00:00Z", ("trove", "mysql", "postgresql"),
        **{MYSQL.state_key: "current", MYSQL.tags_key: "trove,mysql",
           pg.state_key: "current", pg.tags_key: "trove,postgresql"},
    )  # fmt: skip
    assert rotation.needed_elsewhere(shared, MYSQL) == {"trove", "postgresql"}
    retired_pg = image(
        "r", "2026-01-01T00:00:00Z", **{pg.state_key: "retired", pg.tags_key: "trove"}
    )
    assert rotation.needed_elsewhere(retired_pg, MYSQL) == set()


def test_registration_as_trove_manage_and_the_document_write_it() -> None:
    reg = register.Registration(MYSQL, ("trove", "mysql"), True, "/r/validation-rules.json")
    calls = register.trove_manage_calls(reg)
    assert calls.version == [
        "datastore_version_update", "mysql", "8.4", "mysql", "", "", "1",
        "--image-tags", "trove,mysql", "--version", "8.4",
    ]  # fmt: skip
    assert calls.datastore == ["datastore_update", "mysql", ""]  # only for a new datastore
    assert calls.default == ["datastore_update", "mysql", "8.4"]  # --default
    assert calls.rules == [
        "db_load_datastore_config_parameters", "mysql", "8.4", "/r/validation-rules.json",
        "--version", "8.4",
    ]  # fmt: skip
    no_default = register.Registration(MYSQL, ("trove", "mysql"), False, "/r/v.json")
    assert register.trove_manage_calls(no_default).default is None
    create, rules = register.openstack_commands(reg)
    assert create == (
        "openstack datastore version create 8.4 mysql mysql '' --image-tags trove,mysql "
        "--active --default"
    )
    assert (
        rules
        == "trove-manage db_load_datastore_config_parameters mysql 8.4 /r/validation-rules.json"
    )
    assert register.rules_path("mysql", None).endswith(
        "/trove/templates/mysql/validation-rules.json"
    )


def test_what_glance_stored_is_compared_with_the_file() -> None:
    from assembler.publish.command import _compare
    from assembler.publish.hashing import Digests

    local = Digests(10, "m" * 32, "s" * 64, "x" * 128, b"")
    good = Image("i", "n", "active", (), "", 10, "m" * 32, "sha512", "x" * 128, "raw")
    assert _compare(good, local) == ""
    short = Image("i", "n", "active", (), "", 9, "m" * 32, "sha512", "y" * 128, "raw")
    said = _compare(short, local)
    assert "size 9 instead of 10" in said and "os_hash_value" in said
    queued = Image("i", "n", "queued", (), "", None, None, None, None, "raw")
    assert "status queued instead of active" in _compare(queued, local)


def test_a_retirement_reads_back_as_written() -> None:
    record = rotation.Retirement(
        "2026-12-03T10:00:00.000001+00:00", rotation.Retire.DEACTIVATE, "img-2"
    )
    retired = image("old", "2026-01-01T00:00:00Z", **{MYSQL.retired_key: record.value()})
    assert rotation.Retirement.of(retired, MYSQL.slug) == record
    assert rotation.Retirement.of(image("plain", ""), MYSQL.slug) is None
    garbled = image("g", "", **{MYSQL.retired_key: "yesterday maybe"})
    assert rotation.Retirement.of(garbled, MYSQL.slug) is None
