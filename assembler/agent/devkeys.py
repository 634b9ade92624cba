"""Dev mode's SSH key pair: the guest and the controller log in to each other with it.

trovestack copies the controller user's own ~/.ssh/id_rsa into the image; we never do. Each
build gets a dedicated ed25519 pair (or the one given with --dev-key), saved beside the image so
the operator can reach the guests, and authorized on the controller only when asked.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assembler.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # OpenSSH PEM
    public: str  # one authorized_keys line

    @classmethod
    def generate(cls, comment: str) -> KeyPair:
        return cls.from_private(Ed25519PrivateKey.generate(), comment)

    @classmethod
    def load(cls, path: Path, comment: str) -> KeyPair:
        try:
            key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--dev-key {path}: not an unencrypted OpenSSH private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"--dev-key {path}: an ed25519 key is needed")
        return cls.from_private(key, comment)

    @classmethod
    def from_private(cls, key: Ed25519PrivateKey, comment: str) -> KeyPair:
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(private, f"{public.decode()} {comment}")


def key_paths(output: Path) -> tuple[Path, Path]:
    """Where the operator's copy goes: beside the image."""
    private = output.with_name(output.name + ".dev-key")
    return private, private.with_name(private.name + ".pub")


def save_beside(pair: KeyPair, output: Path) -> Path:
    private, public = key_paths(output)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private)
    public.write_text(pair.public + "\n")
    return private


def authorize_on_controller(pair: KeyPair, username: str) -> Path:
    """Append the guest's public key to `username`'s authorized_keys on this host, once."""
    try:
        user = pwd.getpwnam(username)
    except KeyError:
        raise UsageError(f"HOST_SCP_USERNAME {username} is not a user of this host") from None
    ssh_dir = Path(user.pw_dir) / ".ssh"
    keys = ssh_dir / "authorized_keys"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    existing = keys.read_text() if keys.exists() else ""
    if pair.public not in existing.splitlines():
        with keys.open("a") as f:
            if existing and not existing.endswith("\n"):
                f.write("\n")
            f.write(pair.public + "\n")
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, user.pw_uid, user.pw_gid)
    return keys
