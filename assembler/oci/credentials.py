"""Registry logins from docker's config.json, held so that they never reach a log.

docker writes `auths` entries keyed by the registry as typed at `docker login`: `host`,
`https://host`, `http://host/v1/`..., with `auth` = base64 of `user:password` (or, in older
or hand-written files, `username` and `password`). Credential helpers (`credsStore`,
`credHelpers`) are programs of docker's and are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from assembler.errors import UsageError

# Docker Hub's logins are stored under its v1 index URL.
_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """$DOCKER_CONFIG/config.json, else ~/.docker/config.json (docker's own lookup)."""
    env = os.environ if env is None else env
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".docker" / "config.json"


def normalize_host(key: str) -> str:
    """`https://Host:5000/v1/` -> `host:5000`; Docker Hub's many names -> `docker.io`."""
    netloc = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    host = netloc.lower()
    return "docker.io" if host in _HUB_KEYS else host


def lookup(host: str, path: Path | None = None) -> Credentials | None:
    """The login docker's config.json holds for `host`, or None (anonymous)."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read docker config {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"docker config {path} is not JSON: {exc}") from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = normalize_host(host)
    for key, entry in auths.items():
        if normalize_host(str(key)) == wanted and isinstance(entry, dict):
            found = _entry(entry, path, str(key))
            if found is not None:
                return found
    return None


def _entry(entry: dict[str, object], path: Path, key: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            # Say where, never what: the value is a password.
            raise UsageError(f"docker config {path}: the auth of {key} is not base64") from exc
        user, colon, password = decoded.partition(":")
        if not colon or not user:
            raise UsageError(f"docker config {path}: the auth of {key} is not user:password")
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return Credentials(name, secret)
    return None
