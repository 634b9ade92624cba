"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from assembler.accel import Accel
from assembler.distros import RELEASES
from assembler.errors import UsageError
from tests.builds import (  # noqa: F401 (fixtures, found by name)
    images_dir,
    inspect,
    qcow2_custom,
    raw_production,
    vmdk_dev,
)


@pytest.fixture(scope="session")
def debian_base() -> Path:
    """The Debian bookworm base from the machine's cache, built first if missing (~2 min)."""
    from assembler.base import BaseSpec, cached_base

    try:
        return cached_base(BaseSpec(RELEASES["bookworm"]), Accel.TCG)
    except UsageError as exc:  # e.g. not root: fail loudly, a skip would hide every image test
        pytest.fail(f"cannot build the Debian base on this host: {exc}")
