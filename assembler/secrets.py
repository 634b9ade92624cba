"""Password hashing for the guest's shadow file: the clear text never enters the image."""

from __future__ import annotations

from assembler.errors import UsageError
from assembler.run import run


def hash_password(password: str) -> str:
    """A SHA-512 crypt(3) hash, made by the host's openssl (Python's crypt module is gone)."""
    if "\n" in password:
        raise UsageError("TROVE_ROOT_PASSWORD must be a single line")
    hashed = run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", secret_input=True)
    return hashed.strip()
