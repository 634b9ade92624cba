"""Images on disk: OCI layouts and docker save archives, written and read back, digests checked."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from assembler.errors import UsageError
from assembler.oci import media
from assembler.oci.layout import (
    Image,
    image_from_files,
    read_docker_archive,
    read_image,
    read_oci_layout,
    write_docker_archive,
    write_oci_layout,
)
from assembler.oci.reference import Reference


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_image(tmp: Path, content: bytes = b"hello\n") -> Image:
    """A one-layer image (tar.gz) whose config names the layer's diff_id, as docker needs."""
    raw = layer_tar({"etc/greeting": content})
    layer = tmp / "layer.tar.gz"
    layer.write_bytes(gzip.compress(raw, mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    return image_from_files(json.dumps(config).encode(), [layer], tmp / "work")


def test_oci_layout_round_trip(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    assert image.layers[0].media_type == media.OCI_LAYER_GZIP
    written = write_oci_layout(image, tmp_path / "layout", ref_name="15")
    assert json.loads((tmp_path / "layout" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }
    back = read_oci_layout(tmp_path / "layout", "15")
    assert back.manifest == image.manifest
    assert back.manifest_digest == image.manifest_digest == written.manifest_digest
    assert back.layers == image.layers and back.config == image.config
    assert back.read_blob(back.layers[0].digest) == image.read_blob(image.layers[0].digest)
    with pytest.raises(UsageError, match="no image named 16"):
        read_oci_layout(tmp_path / "layout", "16")


def test_docker_archive_round_trip_is_deterministic(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    tags = [
        Reference.parse("postgres:15"),
        Reference.parse("127.0.0.1:5000/trove-test-double/postgresql:15"),
    ]
    write_docker_archive(image, tags, tmp_path / "a.tar")
    write_docker_archive(image, [str(t) for t in tags], tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert {m.mtime for m in tar.getmembers()} == {0}
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [
        "postgres:15",
        "127.0.0.1:5000/trove-test-double/postgresql:15",
    ]
    assert manifest[0]["Config"] == "blobs/sha256/" + image.config.digest.removeprefix("sha256:")
    back = read_docker_archive(tmp_path / "a.tar")
    assert back.manifest_digest == image.manifest_digest  # the saved manifest is kept as is
    assert read_image(tmp_path / "a.tar").config == image.config
    assert not list(tmp_path.glob(".*.tmp"))


def test_old_docker_save_layout(tmp_path: Path) -> None:
    """docker < 25: `<hex>.json` config and `<id>/layer.tar`, checked against diff_ids."""
    raw = layer_tar({"a": b"1"})
    config = json.dumps(
        {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"

    def build(layer: bytes, path: Path) -> Path:
        files = {
            config_name: config,
            "abc123/layer.tar": layer,
            "manifest.json": json.dumps(
                [{"Config": config_name, "RepoTags": ["x:1"], "Layers": ["abc123/layer.tar"]}]
            ).encode(),
        }
        with tarfile.open(path, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    image = read_docker_archive(build(raw, tmp_path / "old.tar"), "x:1")
    assert image.layers[0].media_type == media.OCI_LAYER
    assert image.layers[0].digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert image.read_blob(image.layers[0].digest) == raw
    with pytest.raises(UsageError, match="does not match its diff_id"):
        read_docker_archive(build(layer_tar({"a": b"2"}), tmp_path / "bad.tar"))


def test_corrupt_blob_in_layout_is_detected(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    write_oci_layout(image, tmp_path / "layout")
    blob = tmp_path / "layout" / "blobs" / "sha256" / image.layers[0].digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.unlink()  # a hard link to the source: write a new file
    blob.write_bytes(bytes(data))
    with pytest.raises(
        UsageError, match=r"not a docker save archive or OCI layout: .*digest mismatch"
    ):
        read_oci_layout(tmp_path / "layout")


def test_corrupt_blob_in_archive_is_detected(tmp_path: Path) -> None:
    image = make_image(tmp_path)
    path = tmp_path / "a.tar"
    write_docker_archive(image, ["x:1"], path)
    data = bytearray(path.read_bytes())
    marker = data.find(image.read_blob(image.layers[0].digest)[:64])
    data[marker + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="digest mismatch"):
        read_docker_archive(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not a tar at all" * 64, "not a tar"),
        (gzip.compress(b"x"), "compressed"),
        (layer_tar({"hello": b"x"}), "neither manifest.json nor index.json"),
        (layer_tar({"manifest.json": b"{nope"}), "manifest.json is not JSON"),
        (layer_tar({"manifest.json": b"[]"}), "lists no image"),
    ],
)
def test_malformed_archives(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(content)
    with pytest.raises(
        UsageError, match=f"not a docker save archive or OCI layout: {path}: .*{why}"
    ):
        read_image(path)


def test_malformed_layout(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json").write_text('{"manifests": []}')
    with pytest.raises(UsageError, match="lists no manifests"):
        read_oci_layout(tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        read_image(tmp_path / "missing")
