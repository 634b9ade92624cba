"""Password hashing for the guest's shadow file: the clear text never enters the image."""

from __future__ import annotations

import hashlib

from assembler.errors import UsageError
from assembler.run import run


def hash_password(password: str) -> str:
    """A SHA-512 crypt(3) hash, made by the host's openssl (Python's crypt module is gone)."""
    if "\n" in password:
        raise UsageError("TROVE_ROOT_PASSWORD must be a single line")
    hashed = run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", secret_input=True)
    return hashed.strip()


# Fixed: the layer cache must find the same id for the same password in every build.
_ID_SALT = b"trove-image-assembler root password layer key"


def password_id(password: str) -> str:
    """What the layer cache keys a password by: the crypt hash above is salted afresh each
    build, and the clear text must not be stored. scrypt keeps guessing from the id slow."""
    return hashlib.scrypt(password.encode(), salt=_ID_SALT, n=2**14, r=8, p=1, dklen=32).hex()
