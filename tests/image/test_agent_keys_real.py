"""The agent's real venv, laid out from the machine's cached wheelhouse (downloaded the first
time), against the key detector: what the build strips, and that the boot check's scan of the
same tree then finds nothing. ~30 s."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from assembler.agent.payload import is_test_file, strip_private_keys
from assembler.agent.venv import VENV_PREFIX, host_can_compile, lay_out_venv, site_packages
from assembler.agent.wheelhouse import WheelhouseSpec, build_wheelhouse
from assembler.boottest import guest_facts
from assembler.distros import RELEASES

pytestmark = pytest.mark.image


def test_the_real_venv_loses_every_private_key(tmp_path: Path) -> None:
    house = build_wheelhouse(WheelhouseSpec.for_release(RELEASES["bookworm"]))
    lay_out_venv(house, tmp_path, compile_bytecode=host_can_compile(house.python))
    site = site_packages(VENV_PREFIX, house.python)
    before = {k["path"] for k in guest_facts.private_keys(str(tmp_path))}
    removed = strip_private_keys(tmp_path)
    print("\nremoved:\n  " + "\n  ".join(removed))
    assert set(removed) == before
    # PEM files the old detector (a block at a line's start, files < 64 KiB) found too.
    fixtures = (
        "glanceclient/tests/unit/var/privatekey.key",
        "novaclient/tests/unit/idfake.pem",
        "oslo_service/tests/ssl_cert/privatekey.key",
    )
    # It missed this one: a 97 KiB test module with the key as quoted lines.
    module = "keystonemiddleware/tests/unit/test_external_oauth2_token_middleware.py"
    assert {f"{site}/{p}" for p in (*fixtures, module)} <= set(removed)
    assert all(is_test_file(PurePosixPath(p)) for p in removed)
    assert guest_facts.private_keys(str(tmp_path)) == []
