"""One real Glance for the session (tests/publish/glance_service.py), and its clouds.yaml."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.publish.glance_service import Glance


@pytest.fixture(scope="session")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glance]:
    """The running Glance (~6 s to start). Images persist across tests: name them uniquely."""
    with Glance(tmp_path_factory.mktemp("glance")) as service:
        yield service


@pytest.fixture
def glance_cloud(glance: Glance, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a cloud in clouds.yaml that is this Glance, as an operator would name one:
    `openstack.connect(cloud=name)` (or `assembler publish --cloud name`) finds it through
    OS_CLIENT_CONFIG_FILE; a caller's OS_CLOUD would name another default cloud."""
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(glance.write_clouds_yaml()))
    monkeypatch.delenv("OS_CLOUD", raising=False)
    return glance.cloud
