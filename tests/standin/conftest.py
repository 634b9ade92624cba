"""The stand-in images, from the machine's cache (built first if missing: a few minutes each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from assembler.errors import UsageError
from assembler.standin import standin_layout


def _layout(name: str) -> Path:
    try:
        return standin_layout(name)
    except UsageError as exc:  # e.g. not root: fail loudly, a skip would hide every test here
        pytest.fail(f"cannot build the stand-in image {name} on this host: {exc}")


@pytest.fixture(scope="session")
def postgresql_layout() -> Path:
    return _layout("postgresql")


@pytest.fixture(scope="session")
def mariadb_layout() -> Path:
    return _layout("mariadb")


@pytest.fixture(scope="session")
def broken_layout() -> Path:
    return _layout("postgresql-broken")
