"""The directories the Trove guest agent expects, owned by the guest user as trovestack does."""

from __future__ import annotations

from typing import Any

from assembler.config import BuildConfig
from assembler.guest import ids

# (path, mode): conf.d and certs hold the transport URL's password and TLS material.
DIRECTORIES: tuple[tuple[str, int], ...] = (
    ("/etc/trove", 0o755),
    ("/etc/trove/conf.d", 0o750),
    ("/etc/trove/certs", 0o750),
    ("/var/lib/trove", 0o755),
    ("/var/log/trove", 0o755),
    ("/opt/trove-guestagent", 0o755),
)


def directories(g: Any, cfg: BuildConfig) -> None:
    uid, gid = ids(g, cfg.guest_username, "root")
    for path, mode in DIRECTORIES:
        g.mkdir_p(path)
        g.chmod(mode, path)
        g.chown(uid, gid, path)
