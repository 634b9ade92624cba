"""Agent options at the edge, and dev mode's key pair."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from assembler.agent.devkeys import KeyPair, authorize_on_controller, save_beside
from assembler.config import BuildOptions, make_config
from assembler.errors import UsageError


def test_agent_defaults_follow_trovestack() -> None:
    cfg = make_config(BuildOptions(output="/tmp/x.qcow2"), {"PATH_TROVE": "/home/stack/trove"})
    assert cfg.agent.controller_trove_path == "/home/stack/trove"
    assert cfg.agent.version is None and cfg.agent.source is None
    cfg = make_config(BuildOptions(output="/tmp/x.qcow2"), {})
    assert cfg.agent.controller_trove_path == "/opt/stack/trove"
    env = {"TROVE_MGMT_GATEWAY": "10.0.0.1", "SYNC_LOG_TO_CONTROLLER": "True"}
    cfg = make_config(BuildOptions(output="/tmp/x.qcow2"), env)
    assert cfg.agent.mgmt_gateway == "10.0.0.1" and cfg.agent.sync_logs is True


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (BuildOptions(agent_version="26.0.0", agent_source="/tmp"), "exclude each other"),
        (BuildOptions(dev_mode=False, controller_host="10.0.0.2"), "only apply in dev mode"),
        (BuildOptions(dev_mode=False, authorize_on_controller=True), "only apply in dev mode"),
        (BuildOptions(agent_source="/nonexistent/trove"), "does not exist"),
        (BuildOptions(dev_key="/nonexistent/key"), "does not exist"),
    ],
)
def test_bad_agent_options(opts: BuildOptions, message: str) -> None:
    opts.output = "/tmp/x.qcow2"
    with pytest.raises(UsageError, match=message):
        make_config(opts, {})


def test_generated_key_is_a_working_ed25519_pair(tmp_path: Path) -> None:
    pair = KeyPair.generate("trove-guest-test")
    private = save_beside(pair, tmp_path / "img.qcow2")
    assert private == tmp_path / "img.qcow2.dev-key"
    assert private.stat().st_mode & 0o777 == 0o600
    # ssh-keygen derives the same public key from the private one: a real, usable pair.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", private], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == pair.public.split()[:2]
    assert pair.public.startswith("ssh-ed25519 ") and pair.public.endswith(" trove-guest-test")
    assert KeyPair.load(private, "again").public.split()[1] == pair.public.split()[1]


def test_dev_key_must_be_ed25519(tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", tmp_path / "rsa"],
        check=True,
    )
    with pytest.raises(UsageError, match="ed25519"):
        KeyPair.load(tmp_path / "rsa", "x")


def test_authorize_on_controller_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in passwd entry whose home is a temp dir: the real user's keys stay untouched.
    me = pwd.getpwuid(os.getuid())
    fake = pwd.struct_passwd((me.pw_name, "x", me.pw_uid, me.pw_gid, "", str(tmp_path), "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwnam", lambda name: fake)
    pair = KeyPair.generate("guest")
    keys = authorize_on_controller(pair, me.pw_name)
    authorize_on_controller(pair, me.pw_name)
    assert keys.read_text().splitlines().count(pair.public) == 1
    assert keys.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".ssh").stat().st_mode & 0o777 == 0o700
