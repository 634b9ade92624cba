"""The image's digests in one pass over the file: the manifest's sha256 (is this still the file
that was built?), Glance's md5 `checksum` and sha512 `os_hash_value` (did Glance store it
whole?), and the SHA-256 a signature covers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assembler import cancel

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str
    sha512: str
    sha256_raw: bytes  # what an RSA-PSS signature over the image bytes is made of


def digests(path: Path, advance: Callable[[int], None] | None = None) -> Digests:
    md5 = hashlib.md5(usedforsecurity=False)  # Glance's `checksum`: comparison, not security
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            cancel.check()
            for h in (md5, sha256, sha512):
                h.update(chunk)
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
    return Digests(size, md5.hexdigest(), sha256.hexdigest(), sha512.hexdigest(), sha256.digest())
