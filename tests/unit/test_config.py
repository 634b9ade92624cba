"""BuildConfig from options, trovestack's environment and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from assembler.accel import Accel
from assembler.config import (
    BuildOptions,
    DockerSource,
    EtcHosts,
    SourceKind,
    make_config,
    parse_datasources,
    parse_size,
)
from assembler.errors import UsageError
from assembler.formats import ImageFormat


def test_trovestack_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = make_config(BuildOptions(), {})
    assert cfg.release.codename == "jammy"
    assert str(cfg.guest_os) == "ubuntu"
    assert cfg.dev_mode is True
    assert cfg.guest_username == "ubuntu"
    assert cfg.output == tmp_path / "images" / "trove-guest-ubuntu-jammy-dev.qcow2"
    assert cfg.image_format is ImageFormat.QCOW2
    assert cfg.size_bytes == 5 * 1024**3
    assert cfg.datasources == ("ConfigDrive", "OpenStack")
    assert cfg.etc_hosts is EtcHosts.LOCALHOST
    assert cfg.docker_source is DockerSource.ARCHIVE
    assert cfg.accel is Accel.AUTO
    assert cfg.root_password_hash is None


def test_format_alone_names_the_default_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = make_config(BuildOptions(image_format="raw", dev_mode=False, guest_os="debian"), {})
    assert cfg.output.name == "trove-guest-debian-bookworm.raw"
    assert cfg.image_format is ImageFormat.RAW


def test_environment_is_honoured() -> None:
    env = {
        "DIB_CLOUD_INIT_DATASOURCES": "OpenStack,ConfigDrive , NoCloud",
        "DIB_CLOUD_INIT_ETC_HOSTS": "template",
        "HOST_SCP_USERNAME": "stack",
        "GUEST_IMAGESIZE": "8",
        "ASSEMBLER_ACCEL": "tcg",
    }
    cfg = make_config(BuildOptions(output="/tmp/x.qcow2"), env)
    assert cfg.datasources == ("OpenStack", "ConfigDrive", "NoCloud")
    assert cfg.etc_hosts is EtcHosts.TEMPLATE
    assert cfg.host_scp_username == "stack"
    assert cfg.size_bytes == 8 * 1024**3
    assert cfg.accel is Accel.TCG


def test_options_win_over_environment() -> None:
    env = {
        "DIB_CLOUD_INIT_DATASOURCES": "NoCloud",
        "GUEST_IMAGESIZE": "8",
        "ASSEMBLER_ACCEL": "kvm",
    }
    opts = BuildOptions(output="/tmp/x.qcow2", datasources="OpenStack", size="6G", accel="tcg")
    cfg = make_config(opts, env)
    assert cfg.datasources == ("OpenStack",)
    assert cfg.size_bytes == 6 * 1024**3
    assert cfg.accel is Accel.TCG


def test_root_password_is_stored_hashed_only() -> None:
    cfg = make_config(BuildOptions(output="/tmp/x.qcow2"), {"TROVE_ROOT_PASSWORD": "s3cret!"})
    assert cfg.root_password_hash is not None
    assert cfg.root_password_hash.startswith("$6$")
    assert "s3cret" not in cfg.root_password_hash
    assert "s3cret" not in repr(cfg)


def test_embedded_images_from_dib_trove_docker_images(tmp_path: Path) -> None:
    archive = tmp_path / "pg.tar"
    archive.write_bytes(b"")
    layout = tmp_path / "layout"
    layout.mkdir()
    env = {
        "DIB_TROVE_DOCKER_IMAGES": (
            f"mysql:8.0, registry.example.com:5000/db/maria:11={'trove/maria:11'} "
            f"{archive}=trove/pg:15,oci:{layout}=trove/other:1"
        )
    }
    images = make_config(BuildOptions(), env).datastore_images
    by = {i.target: i for i in images}
    assert by["docker.io/library/mysql:8.0"].kind is SourceKind.REGISTRY
    assert by["docker.io/trove/maria:11"].source == "registry.example.com:5000/db/maria:11"
    assert by["docker.io/trove/pg:15"].kind is SourceKind.DOCKER_ARCHIVE
    assert by["docker.io/trove/other:1"].kind is SourceKind.OCI_LAYOUT
    assert by["docker.io/trove/other:1"].source == str(layout)


def test_the_option_wins_over_the_variable() -> None:
    opts = BuildOptions(datastore_images=["postgres:15"])
    cfg = make_config(opts, {"DIB_TROVE_DOCKER_IMAGES": "mysql:8.0"})
    assert [i.source for i in cfg.datastore_images] == ["docker.io/library/postgres:15"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Bad//Ref:1", "malformed image reference"),
        ("postgres:15=", "expected"),
        ("docker-archive:/nonexistent.tar=pg:15", "does not exist"),
        ("pg:15,postgres:15=pg:15", "named twice"),
    ],
)
def test_bad_embedded_images(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_config(BuildOptions(), {"DIB_TROVE_DOCKER_IMAGES": text})


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (BuildOptions(guest_os="centos"), "unknown guest OS"),
        (BuildOptions(guest_os="debian", release="jammy"), "unknown release 'jammy' for debian"),
        (BuildOptions(release="focal"), "unknown release"),
        (BuildOptions(guest_username="Bad User"), "invalid guest username"),
        (BuildOptions(output="x.qcow2", image_format="raw"), "conflicts"),
        (BuildOptions(output="x.iso"), "cannot tell the format"),
        (BuildOptions(image_format="vdi"), "unknown format"),
        (BuildOptions(size="five"), "cannot read size"),
        (BuildOptions(datasources="OpenStak"), "unknown cloud-init datasource"),
        (BuildOptions(datasources=" , "), "empty"),
        (BuildOptions(mirror="deb.example/debian"), "--mirror"),
        (BuildOptions(docker_source="podman"), "unknown docker source"),
    ],
)
def test_bad_input(opts: BuildOptions, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_config(opts, {})


@pytest.mark.parametrize(
    ("text", "size"),
    [("5G", 5 * 1024**3), ("5", 5 * 1024**3), ("5120M", 5 * 1024**3), ("10GiB", 10 * 1024**3)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_datasource_names_are_canonical() -> None:
    assert parse_datasources("configdrive, openstack") == ("ConfigDrive", "OpenStack")
    with pytest.raises(UsageError, match="twice"):
        parse_datasources("OpenStack, openstack")


def test_compression_and_layer_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    base = {"guest_os": "debian", "release": "bookworm"}
    cfg = make_config(BuildOptions(**base), {})
    assert str(cfg.compression) == "zlib" and cfg.max_age_days == 7.0 and cfg.layer_cache is None
    # Only qcow2 compresses: other formats get none, and asking for it is an error.
    assert str(make_config(BuildOptions(**base, image_format="raw"), {}).compression) == "none"
    with pytest.raises(UsageError, match="qcow2 only"):
        make_config(BuildOptions(**base, image_format="raw", compression="zlib"), {})
    with pytest.raises(UsageError, match="unknown compression"):
        make_config(BuildOptions(**base, compression="lzma"), {})
    with pytest.raises(UsageError, match="--max-age"):
        make_config(BuildOptions(**base, max_age_days=-1), {})
    env = {"ASSEMBLER_LAYER_CACHE": str(tmp_path / "layers")}
    assert make_config(BuildOptions(**base), env).layer_cache == tmp_path / "layers"
