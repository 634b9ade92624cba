"""Content digests: the grammar, and hashing that checks while it reads or writes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import BinaryIO

# distribution's reference grammar for a digest (any algorithm, at least 32 hex digits).
DIGEST_GRAMMAR = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
# The algorithms OCI registers, with their exact lengths: only these can be verified.
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_ENCODED = re.compile(r"[0-9a-f]+")
CHUNK = 1024 * 1024


def digest_problem(text: str) -> str | None:
    """Why `text` is not a digest we can verify, or None when it is one."""
    if not re.fullmatch(DIGEST_GRAMMAR, text):
        return f"{text!r} is not a digest (algorithm:hex)"
    algorithm, _, encoded = text.partition(":")
    if algorithm not in _ALGORITHMS:
        return f"digest algorithm {algorithm} is not supported (sha256, sha512)"
    if len(encoded) != _ALGORITHMS[algorithm] or not _ENCODED.fullmatch(encoded):
        return f"{text!r} is not a {algorithm} digest ({_ALGORITHMS[algorithm]} lowercase hex)"
    return None


def is_digest(text: str) -> bool:
    return digest_problem(text) is None


def hasher(digest: str) -> hashlib._Hash:
    """A fresh hash of the algorithm `digest` names (which must be valid)."""
    return hashlib.new(digest.partition(":")[0])


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes, like: str) -> str:
    """The digest of data with the algorithm of the digest `like`."""
    algorithm = like.partition(":")[0]
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def hex_of(digest: str) -> str:
    return digest.partition(":")[2]


def digest_chunks(chunks: Iterable[bytes], like: str = "sha256:") -> tuple[str, int]:
    """(digest, size) of a stream of chunks, with the algorithm of `like`."""
    algorithm = like.partition(":")[0]
    h = hashlib.new(algorithm)
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return f"{algorithm}:{h.hexdigest()}", size


def read_chunks(f: BinaryIO, limit: int | None = None) -> Iterable[bytes]:
    """Chunks of f, at most `limit` bytes in all when given."""
    left = limit
    while left is None or left > 0:
        chunk = f.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk
