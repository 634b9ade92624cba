"""Builds by an ordinary user (no root on the host). The suite runs as root here, so these run
as a user they create, from copies that user can read.

What needs root is making a base (debootstrap, chroot): `--base archive` without root exits 2
and says why. A build from a base made by root needs none (`make test-all` builds one).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

USER = "trove-assembler-test"
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to create the ordinary user (the suite runs as root here)")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["/usr/sbin/useradd", "--create-home", "--shell", "/bin/sh", USER], check=True
        )
        return pwd.getpwnam(USER)


def as_user(
    user: pwd.struct_passwd, argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base_env = {
        "HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
        "PYTHONPATH": str(PROJECT), "ASSEMBLER_ACCEL": "tcg",
    }  # fmt: skip
    # The host's trust and proxies, as the user's own login would have them.
    passed = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "http_proxy", "https_proxy")
    base_env.update({k: os.environ[k] for k in passed if k in os.environ})
    return subprocess.run(
        ["/usr/sbin/runuser", "-u", user.pw_name, "--", *argv],
        capture_output=True, text=True, cwd=cwd, env={**base_env, **(env or {})},
        timeout=3000, check=False,
    )  # fmt: skip


def readable_by(user: pwd.struct_passwd, path: Path) -> bool:
    return as_user(user, ["test", "-r", str(path)], Path("/")).returncode == 0


@pytest.mark.image
def test_base_archive_without_root_exits_2_and_says_why(user: pwd.struct_passwd) -> None:
    if not readable_by(user, PROJECT / "assembler" / "cli.py"):
        pytest.skip(f"{USER} cannot read the checkout at {PROJECT}")
    # Not pytest's tmp_path: root's own, which the user cannot enter.
    out = Path(tempfile.mkdtemp(prefix="ordinary-user-"))
    shutil.chown(out, user.pw_name)
    proc = as_user(
        user,
        [sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
         "--base", "archive", "-o", str(out / "image.qcow2")],
        cwd=out,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "needs root" in lines[0]
    assert list(out.iterdir()) == []
    shutil.rmtree(out)


@pytest.mark.image
@pytest.mark.full  # a whole cold build of the user's own (~7 min on a slow host)
def test_an_ordinary_user_builds_from_a_base_root_made(
    user: pwd.struct_passwd, debian_base: Path
) -> None:
    if not readable_by(user, PROJECT / "assembler" / "cli.py"):
        pytest.skip(f"{USER} cannot read the checkout at {PROJECT}")
    work = Path(tempfile.mkdtemp(prefix="ordinary-user-"))
    try:
        base = work / "base.qcow2"
        shutil.copyfile(debian_base, base)  # the user's copy of the base root made
        shutil.chown(work, user.pw_name)
        shutil.chown(base, user.pw_name)
        proc = as_user(
            user,
            [sys.executable, "-m", "assembler", "--guest-os", "debian", "--release", "bookworm",
             "--base", str(base), "-o", str(work / "prod.qcow2"), "--no-dev-mode"],
            cwd=work,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        image = work / "prod.qcow2"
        assert image.stat().st_uid == user.pw_uid
        manifest = json.loads((work / "prod.qcow2.manifest.json").read_text())
        assert manifest["firmware"] == ["bios", "uefi"]
        # Its caches are the user's own, under its home.
        assert Path(user.pw_dir, ".cache", "trove-image-assembler", "layers").is_dir()
    finally:
        shutil.rmtree(work)
