"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from assembler.accel import Accel
from assembler.distros import RELEASES
from assembler.errors import UsageError
from tests.builds import (  # noqa: F401 (fixtures, found by name)
    images_dir,
    inspect,
    qcow2_custom,
    qcow2_embedded,
    qcow2_first_boot,
    raw_production,
    test_doubles,
    trixie_base,
    trixie_dev,
    trixie_production,
    vmdk_dev,
)


@pytest.fixture(scope="session", autouse=True)
def session_layer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One layer cache for the session's builds: they share layers as an operator's builds
    would, and nothing from an earlier session (or the user's own cache) is reused."""
    path = tmp_path_factory.mktemp("layer-cache")
    old = os.environ.get("ASSEMBLER_LAYER_CACHE")
    os.environ["ASSEMBLER_LAYER_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ASSEMBLER_LAYER_CACHE", None)
    else:
        os.environ["ASSEMBLER_LAYER_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _release_run_directory() -> Iterator[None]:
    """The suite's own run directory (in-process appliances make one) goes at its end, as a
    build's does when it exits."""
    from assembler import leftovers

    yield
    leftovers.release()


@pytest.fixture(scope="session")
def debian_base() -> Path:
    """The Debian bookworm base from the machine's cache, built first if missing (~2 min)."""
    from assembler.base import BaseSpec, cached_base

    try:
        return cached_base(BaseSpec(RELEASES["bookworm"]), Accel.TCG)
    except UsageError as exc:  # e.g. not root: fail loudly, a skip would hide every image test
        pytest.fail(f"cannot build the Debian base on this host: {exc}")
