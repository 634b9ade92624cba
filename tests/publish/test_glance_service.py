"""The test Glance is a real one: uploads through openstacksdk, format inspection, signature
verification and refusals behave as a production Glance's (33.0.0) do."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from openstack.connection import Connection
from openstack.image.v2.image import Image

from assembler.formats import FORMATS, ImageFormat
from tests.publish.certs import signing_pair
from tests.publish.glance_service import Glance

MIB = 1024 * 1024
DISK_SIZE = 4 * MIB
# Glance's disk_format -> qemu-img's driver and options, as the build writes each (vhd: vpc).
CONVERSIONS = {
    info.glance_disk_format: (info.qemu_driver, ",".join(info.qemu_options))
    for fmt, info in FORMATS.items()
    if fmt is not ImageFormat.RAW
}


def _name(what: str) -> str:  # the session's Glance keeps every test's images
    return f"{what}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn(glance_cloud: str) -> Iterator[Connection]:
    connection = openstack.connect(cloud=glance_cloud)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small raw disk with a GPT partition table, and it converted to each disk_format."""
    for tool in ("qemu-img", "sfdisk"):
        if shutil.which(tool) is None:  # a skip would hide a host that cannot run these
            pytest.fail(f"{tool} is missing (Debian: qemu-utils, fdisk)")
    root = tmp_path_factory.mktemp("disks")
    raw = root / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), str(DISK_SIZE)], check=True)
    # One Linux partition over the disk; sfdisk writes the protective MBR Glance checks.
    subprocess.run(["sfdisk", "-q", str(raw)], input=b"label: gpt\n,,L\n", check=True)
    out = {"raw": raw}
    for disk_format, (driver, options) in CONVERSIONS.items():
        out[disk_format] = root / f"disk.{disk_format}"
        subprocess.run(
            ["qemu-img", "convert", "-O", driver, "-o", options, str(raw), str(out[disk_format])],
            check=True,
        )
    return out


def _queued(conn: Connection, what: str, disk_format: str, properties: dict[str, str]) -> Image:
    """An image with no data yet. create_image(filename=...) deletes an image whose upload
    fails; tests that look at the image after a refused upload upload by hand."""
    image = conn.image.create_image(
        _name(what), disk_format=disk_format, container_format="bare",
        visibility="private", allow_duplicates=True, properties=properties,
    )  # fmt: skip
    assert isinstance(image, Image)  # the v2 API's (the annotation allows v1's)
    return image


def _upload(conn: Connection, image: Image, data: bytes) -> requests.Response:
    response: requests.Response = image.upload(conn.image, data=data)
    return response


def _assert_left_without_data(conn: Connection, glance: Glance, image_id: str) -> None:
    image = conn.image.get_image(image_id)
    assert image.status == "queued"
    assert image.size is None and image.checksum is None and image.hash_value is None
    assert not (glance.images_dir / image_id).exists()  # the file store's name for its data


def test_upload_through_openstacksdk_records_size_and_both_hashes(
    conn: Connection, glance: Glance, disks: dict[str, Path]
) -> None:
    path = disks["qcow2"]
    data = path.read_bytes()
    created = conn.image.create_image(
        _name("upload"), filename=str(path), disk_format="qcow2", container_format="bare",
        visibility="private", tags=["trove", "mysql-8.4"], allow_duplicates=True,
        hw_disk_bus="virtio",
    )  # fmt: skip
    image = conn.image.get_image(created.id)  # create_image answers with the pre-upload image
    assert image.status == "active"
    assert (image.visibility, image.container_format, image.disk_format) == (
        "private", "bare", "qcow2",
    )  # fmt: skip
    assert sorted(image.tags) == ["mysql-8.4", "trove"]
    assert image.owner == glance.project_id  # the identity middleware's project
    assert image.size == len(data)
    assert image.virtual_size == DISK_SIZE  # qcow2 recognised, its header read
    assert image.checksum == hashlib.md5(data).hexdigest()
    assert image.hash_algo == "sha512"
    assert image.hash_value == hashlib.sha512(data).hexdigest()
    assert image.hw_disk_bus == "virtio"  # a property; openstacksdk names the known ones
    assert b"".join(conn.image.download_image(image.id, stream=True).iter_content(MIB)) == data


@pytest.mark.parametrize("disk_format", ["qcow2", "raw", "vmdk", "vhd", "vhdx"])
def test_format_inspection_accepts_each_disk_format(
    conn: Connection, disks: dict[str, Path], disk_format: str
) -> None:
    created = conn.image.create_image(
        _name(disk_format), filename=str(disks[disk_format]), disk_format=disk_format,
        container_format="bare", allow_duplicates=True,
    )  # fmt: skip
    image = conn.image.get_image(created.id)
    assert image.status == "active"
    assert image.size == disks[disk_format].stat().st_size
    # Raw carries no virtual size: Glance counts the bytes (a GPT disk is still "raw").
    assert image.virtual_size == (image.size if disk_format == "raw" else DISK_SIZE)


def test_data_that_is_not_its_disk_format_is_refused(
    conn: Connection, glance: Glance, disks: dict[str, Path]
) -> None:
    """Pins Glance 33's handling, which a publisher's recovery depends on: the format check
    runs after the data is stored, and the refusal leaves it there, with its hashes on the
    queued image; a second upload to that image then fails (500, the store's Duplicate).
    Only deleting the image clears it: start over with a new image."""
    image = _queued(conn, "raw-as-qcow2", "qcow2", {})
    raw = disks["raw"].read_bytes()
    response = _upload(conn, image, raw)
    # 415, not 400: Glance 33 answers InvalidImageData with HTTPUnsupportedMediaType.
    assert response.status_code == 415, response.text
    assert "does not match stream data gpt" in response.text
    refused = conn.image.get_image(image.id)
    assert (refused.status, refused.size) == ("queued", None)
    assert refused.checksum == hashlib.md5(raw).hexdigest()
    assert (glance.images_dir / image.id).exists()
    assert _upload(conn, image, disks["qcow2"].read_bytes()).status_code == 500
    conn.image.delete_image(image.id)
    assert not (glance.images_dir / image.id).exists()


def test_a_rich_format_uploaded_as_raw_is_accepted(
    conn: Connection, disks: dict[str, Path]
) -> None:
    """The other way round is no mismatch for Glance: `raw` is what it cannot inspect, so a
    qcow2 stored as raw passes (with a warning in its log) after qcow2's safety checks."""
    image = _queued(conn, "qcow2-as-raw", "raw", {})
    assert _upload(conn, image, disks["qcow2"].read_bytes()).status_code == 204
    assert conn.image.get_image(image.id).status == "active"


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    return signing_pair()


def _signature_properties(key: rsa.RSAPrivateKey, signed: bytes, cert_id: str) -> dict[str, str]:
    """RSA-PSS (MGF1 SHA-256, maximum salt) over SHA-256 of the bytes: what cursive checks."""
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    return {
        "img_signature": base64.b64encode(key.sign(signed, pss, hashes.SHA256())).decode(),
        "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "RSA-PSS",
        "img_signature_certificate_uuid": cert_id,
    }


def test_a_signed_image_is_verified_and_becomes_active(
    conn: Connection, glance: Glance, disks: dict[str, Path], signer: Any
) -> None:
    key, cert = signer
    data = disks["qcow2"].read_bytes()
    properties = _signature_properties(key, data, glance.store_certificate(cert))
    created = conn.image.create_image(
        _name("signed"), filename=str(disks["qcow2"]), disk_format="qcow2",
        container_format="bare", allow_duplicates=True, properties=properties,
    )  # fmt: skip
    image = conn.image.get_image(created.id)
    assert image.status == "active"
    assert image.properties["img_signature"] == properties["img_signature"]


@pytest.mark.parametrize("wrong", ["other-bytes", "unknown-certificate"])
def test_a_bad_signature_is_refused_and_the_image_keeps_no_data(
    conn: Connection, glance: Glance, disks: dict[str, Path], signer: Any, wrong: str
) -> None:
    key, cert = signer
    data = disks["qcow2"].read_bytes()
    if wrong == "other-bytes":
        properties = _signature_properties(key, data + b"\0", glance.store_certificate(cert))
    else:  # Glance's key manager has no such certificate
        properties = _signature_properties(key, data, str(uuid.uuid4()))
    image = _queued(conn, f"badsig-{wrong}", "qcow2", properties)
    response = _upload(conn, image, data)
    assert response.status_code == 400, response.text
    assert "Signature verification failed" in response.text
    _assert_left_without_data(conn, glance, image.id)


def test_the_refusal_switch_makes_writes_403(conn: Connection, glance: Glance) -> None:
    name = _name("refused")
    with glance.refusing_writes(), pytest.raises(openstack.exceptions.HttpException) as err:
        conn.image.create_image(name, disk_format="raw", container_format="bare")
    assert err.value.status_code == 403
    assert list(conn.image.images(name=name)) == []
    # Off again after the block: the session's other tests write.
    conn.image.create_image(_name("after-refusal"), disk_format="raw", container_format="bare")


class _CutUpload:
    """Image data whose reading fails part-way, as a client's source (a file, a pipe) can.

    Before it fails it waits until Glance shows the image `saving`, so the cut is mid-upload
    (a client can fail before Glance has even begun). Iterated, requests sends it chunked;
    read, with its length known, under a Content-Length."""

    def __init__(self, data: bytes, cut_at: int, saving: Callable[[], bool]) -> None:
        self.data, self.cut_at, self.saving, self.sent = data, cut_at, saving, 0
        self.cut_while_saving = False

    def __len__(self) -> int:
        return len(self.data)

    def read(self, size: int = -1) -> bytes:
        if self.sent >= self.cut_at:
            deadline = time.monotonic() + 10
            while not (saving := self.saving()) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.cut_while_saving = saving
            raise ConnectionAbortedError("the upload is cut")
        size = 65536 if size < 0 else min(size, 65536)
        chunk = self.data[self.sent : self.sent + size]
        self.sent += len(chunk)
        return chunk

    def chunks(self) -> Iterator[bytes]:
        while True:
            yield self.read()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_an_upload_cut_midway_leaves_the_image_queued_without_data(
    conn: Connection, glance: Glance, disks: dict[str, Path], framing: str
) -> None:
    data = disks["qcow2"].read_bytes()
    image = _queued(conn, f"cut-{framing}", "qcow2", {})
    url = f"{glance.url}/v2/images/{image.id}"

    def saving() -> bool:
        return bool(requests.get(url, timeout=10).json()["status"] == "saving")

    upload = _CutUpload(data, len(data) // 2, saving)
    body = upload.chunks() if framing == "chunked" else upload
    # urllib3 closes the connection on the error; requests wraps it when it is unframed.
    with pytest.raises((ConnectionAbortedError, requests.ConnectionError)):
        requests.put(f"{url}/file", data=body, timeout=30,
                     headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert upload.cut_while_saving
    deadline = time.monotonic() + 15  # Glance notices at its next read: at once, here
    while saving() and time.monotonic() < deadline:
        time.sleep(0.2)
    _assert_left_without_data(conn, glance, image.id)
