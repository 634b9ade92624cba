"""Logins from docker's config.json, never shown."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from assembler.errors import UsageError
from assembler.oci.credentials import Credentials, config_path, lookup


def write(tmp_path: Path, auths: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "key", ["reg.example:5000", "https://reg.example:5000", "http://REG.example:5000/v1/"]
)
def test_auth_entry_under_any_key_form(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, {key: {"auth": b64("alice:s3:cr3t")}})
    assert lookup("reg.example:5000", path) == Credentials("alice", "s3:cr3t")
    assert lookup("other.example", path) is None


def test_username_password_and_docker_hub(tmp_path: Path) -> None:
    path = write(tmp_path, {"https://index.docker.io/v1/": {"username": "bob", "password": "pw"}})
    assert lookup("docker.io", path) == Credentials("bob", "pw")


def test_no_file_or_helper_only_entry_is_anonymous(tmp_path: Path) -> None:
    assert lookup("reg.example", tmp_path / "none.json") is None
    assert lookup("reg.example", write(tmp_path, {"reg.example": {}})) is None


def test_bad_auth_says_where_not_what(tmp_path: Path) -> None:
    path = write(tmp_path, {"reg.example": {"auth": "!!!hunter2"}})
    with pytest.raises(UsageError, match=r"the auth of reg\.example is not base64") as err:
        lookup("reg.example", path)
    assert "hunter2" not in str(err.value)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UsageError, match="is not JSON"):
        lookup("reg.example", path)


def test_config_path_follows_docker() -> None:
    assert config_path({"DOCKER_CONFIG": "/d"}) == Path("/d/config.json")
    assert config_path({"HOME": "/h"}) == Path("/h/.docker/config.json")


def test_password_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    creds = Credentials("alice", "hunter2")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("t").debug("creds %s %r %s", creds, creds, [creds])
    for text in (repr(creds), str(creds), f"{creds}", caplog.text):
        assert "hunter2" not in text
    assert "alice" in repr(creds)
