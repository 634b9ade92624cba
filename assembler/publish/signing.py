"""Glance's image signature: RSA-PSS over the image bytes' SHA-256, which Glance (through
cursive) checks at upload against the certificate its key manager holds, and Nova may check
again before it boots the image."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from assembler.errors import UsageError

HASH_METHOD = "SHA-256"
KEY_TYPE = "RSA-PSS"


def load_key(path: Path, password: bytes | None = None) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except OSError as exc:
        raise UsageError(f"--sign-key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"--sign-key {path} is not a PEM private key we can read: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"--sign-key {path} is not an RSA key (Glance's RSA-PSS needs one)")
    return key


def signature_properties(
    key: rsa.RSAPrivateKey, sha256_digest: bytes, certificate_uuid: str
) -> dict[str, str]:
    """The img_signature* properties for an image whose bytes hash to sha256_digest."""
    signature = key.sign(
        sha256_digest,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        utils.Prehashed(hashes.SHA256()),
    )
    return {
        "img_signature": base64.b64encode(signature).decode(),
        "img_signature_hash_method": HASH_METHOD,
        "img_signature_key_type": KEY_TYPE,
        "img_signature_certificate_uuid": certificate_uuid,
    }
