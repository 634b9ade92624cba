"""Published image sources as data: URLs, checksum lists, and the pinned Ubuntu key."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from assembler.distros import RELEASES, GuestOS
from assembler.download import dearmor
from assembler.errors import UsageError
from assembler.sources import (
    SOURCES,
    UBUNTU_CLOUD_FPR,
    HashAlgo,
    parse_sums,
    source_for,
)


def digest(algo: str, seed: str) -> str:
    return hashlib.new(algo, seed.encode()).hexdigest()


def test_every_release_has_a_published_source() -> None:
    for release in RELEASES.values():
        src = source_for(release)
        assert (src.guest_os, src.release, src.arch) == (
            release.distro.name,
            release.codename,
            "amd64",
        )
    assert len(SOURCES) == len(RELEASES)


@pytest.mark.parametrize("codename", ["jammy", "noble"])
def test_ubuntu_default_path(codename: str) -> None:
    src = source_for(RELEASES[codename])
    site = f"https://cloud-images.ubuntu.com/{codename}/current"
    assert src.image_url() == f"{site}/{codename}-server-cloudimg-amd64.img"
    assert src.sums_url() == f"{site}/SHA256SUMS"
    assert src.signature_url() == f"{site}/SHA256SUMS.gpg"
    assert src.algo is HashAlgo.SHA256
    assert src.fingerprints == (UBUNTU_CLOUD_FPR,)
    assert src.key_file is not None and src.key_file.is_file()


def test_debian_bookworm_is_checked_but_unsigned() -> None:
    src = source_for(RELEASES["bookworm"])
    site = "https://cloud.debian.org/images/cloud/bookworm/latest"
    assert src.image_url() == f"{site}/debian-12-genericcloud-amd64.qcow2"
    assert src.sums_url() == f"{site}/SHA512SUMS"
    assert src.algo is HashAlgo.SHA512
    assert src.signature is None and src.signature_url() is None
    assert src.fingerprints == () and src.key_file is None


def test_base_url_replaces_the_site_only() -> None:
    src = source_for(RELEASES["noble"])
    mirror = "http://mirror.internal/ubuntu-cloud/"
    assert src.image_url(mirror) == (
        "http://mirror.internal/ubuntu-cloud/noble/current/noble-server-cloudimg-amd64.img"
    )
    assert src.signature_url(mirror) == (
        "http://mirror.internal/ubuntu-cloud/noble/current/SHA256SUMS.gpg"
    )
    # A mirror that re-signs Debian's list puts the signature where Ubuntu does.
    deb = source_for(RELEASES["bookworm"])
    assert deb.signature_url(mirror, "SHA512SUMS.gpg") == (
        "http://mirror.internal/ubuntu-cloud/bookworm/latest/SHA512SUMS.gpg"
    )


def test_unknown_arch_asks_for_base() -> None:
    with pytest.raises(UsageError, match="--base PATH"):
        source_for(RELEASES["jammy"], arch="riscv64")


def test_parse_ubuntu_sha256sums() -> None:
    img, kvm = digest("sha256", "img"), digest("sha256", "kvm")
    text = (
        f"{digest('sha256', 'tar')} *jammy-server-cloudimg-amd64-root.tar.xz\n"
        f"{kvm} *jammy-server-cloudimg-amd64-disk-kvm.img\n"
        f"{img.upper()} *jammy-server-cloudimg-amd64.img\n"
    )
    sums = parse_sums(text, HashAlgo.SHA256)
    assert sums["jammy-server-cloudimg-amd64.img"] == img
    assert sums["jammy-server-cloudimg-amd64-disk-kvm.img"] == kvm
    assert len(sums) == 3


def test_parse_debian_sha512sums_text_mode() -> None:
    qcow = digest("sha512", "qcow")
    text = (
        f"{digest('sha512', 'json')}  debian-12-genericcloud-amd64.json\n"
        f"{qcow}  debian-12-genericcloud-amd64.qcow2\n"
        f"{digest('sha512', 'raw')}  debian-12-genericcloud-amd64.raw\n"
    )
    assert parse_sums(text, HashAlgo.SHA512)["debian-12-genericcloud-amd64.qcow2"] == qcow


def test_parse_bsd_format_and_skips_other_lines() -> None:
    good = digest("sha256", "x")
    text = (
        "# a comment\n\n"
        f"SHA256 (./disk.img) = {good}\n"
        f"{digest('sha512', 'y')}  long.img\n"  # a sha512 line in a sha256 list
        "nothex  bad.img\n"
        f"{good[:-1]}  short.img\n"
    )
    assert parse_sums(text, HashAlgo.SHA256) == {"disk.img": good}


def test_parse_rejects_a_name_listed_with_two_digests() -> None:
    text = f"{digest('sha256', 'a')} *x.img\n{digest('sha256', 'b')} *x.img\n"
    with pytest.raises(ValueError, match="listed twice"):
        parse_sums(text, HashAlgo.SHA256)
    # The same line twice is harmless.
    same = f"{digest('sha256', 'a')} *x.img\n" * 2
    assert parse_sums(same, HashAlgo.SHA256) == {"x.img": digest("sha256", "a")}


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_pinned_ubuntu_key_file_has_the_pinned_fingerprint() -> None:
    key_file = source_for(RELEASES["jammy"]).key_file
    assert key_file is not None
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run(
            ["gpg", "--homedir", home, "--with-colons", "--show-keys", str(key_file)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GNUPGHOME": home},
        ).stdout
    fprs = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
    assert fprs[0] == UBUNTU_CLOUD_FPR
    uids = [line.split(":")[9] for line in out.splitlines() if line.startswith("uid:")]
    assert uids == ["UEC Image Automatic Signing Key <cdimage@ubuntu.com>"]


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_dearmor_matches_gpg(tmp_path: Path) -> None:
    key_file = source_for(RELEASES["noble"]).key_file
    assert key_file is not None
    expected = subprocess.run(
        ["gpg", "--homedir", str(tmp_path), "--dearmor"],
        input=key_file.read_bytes(),
        capture_output=True,
        check=True,
    ).stdout
    assert dearmor(key_file.read_bytes()) == expected
    assert dearmor(expected) == expected  # binary keys pass through


def test_guest_os_of_every_source_is_known() -> None:
    assert {s.guest_os for s in SOURCES.values()} == set(GuestOS)


def test_debian_trixie_is_the_genericcloud_image_of_13() -> None:
    src = source_for(RELEASES["trixie"])
    assert src.image_url() == (
        "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2"
    )
    assert src.algo is HashAlgo.SHA512 and src.signature is None
