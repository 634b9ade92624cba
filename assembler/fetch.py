"""The base image a build starts from: the operator's own, or the publisher's, verified and cached.

`resolve_base()` is the one entry point (the build when no `--base` is given, and the `fetch`
command). A published image is used only after its checksum matched the published list and,
where the publisher signs that list, after gpgv accepted the signature from the pinned key.

Cache layout, under cache_dir()/downloads (locks live in cache_dir()/locks, so a failed fetch
leaves nothing in downloads/):

    <image name>-<key>/record.json                 what was verified, for reuse without network
    <image name>-<key>/<algo>-<digest>-<image name>  the verified image, never written in place
    <image name>-<key>/<algo>-<digest>-<image name>.part   an unfinished download, resumable

`<key>` hashes the URLs and the trusted key, so a mirror or another key is another entry.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from assembler.digestmemo import sha256_of
from assembler.distros import Release
from assembler.download import (
    NotFoundError,
    dearmor,
    download,
    fetch_small,
    hash_file,
    locked,
    make_session,
    not_a_disk_hint,
    part_path,
    publish,
    sniff_disk_image,
    verify_signature,
    write_atomically,
)
from assembler.errors import DownloadError, UsageError
from assembler.paths import cache_dir
from assembler.sources import DEFAULT_ARCH, HashAlgo, Source, parse_sums, source_for

log = logging.getLogger(__name__)

RECORD = "record.json"
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class Origin(StrEnum):
    PUBLISHED = "published"  # the publisher's image, checked against its (signed) sums
    OPERATOR = "operator"  # `--base`: the operator's file, or a URL checked against --sha256
    ARCHIVE = "archive"  # `--base archive`: built here from the distro's package archive


@dataclass(frozen=True)
class FetchedBase:
    """A verified base image, and what the manifest says about where it came from."""

    path: Path
    url: str  # where it came from; file:// for a local --base
    algo: HashAlgo
    digest: str  # hex, of the file at `path`
    signed: bool  # the checksum list it was checked against carried a good signature
    signer: str | None  # the signing primary key's fingerprint
    origin: Origin

    @property
    def sha256(self) -> str | None:
        return self.digest if self.algo is HashAlgo.SHA256 else None

    @property
    def sha512(self) -> str | None:
        return self.digest if self.algo is HashAlgo.SHA512 else None

    def manifest(self) -> dict[str, Any]:
        return {
            "origin": str(self.origin),
            "path": str(self.path),
            "url": self.url,
            str(self.algo): self.digest,
            "signed": self.signed,
            "signer": self.signer,
        }

    def to_record(self) -> dict[str, Any]:
        return {**self.manifest(), "algo": str(self.algo), "digest": self.digest}

    @classmethod
    def from_record(cls, doc: dict[str, Any]) -> FetchedBase:
        return cls(
            path=Path(doc["path"]),
            url=str(doc["url"]),
            algo=HashAlgo(doc["algo"]),
            digest=str(doc["digest"]),
            signed=bool(doc["signed"]),
            signer=doc["signer"],
            origin=Origin(doc["origin"]),
        )


def resolve_base(
    release: Release,
    base: str | None,
    sha256: str | None,
    base_url: str | None,
    signing_key: Path | None,
    refresh: bool,
    *,
    arch: str = DEFAULT_ARCH,
) -> FetchedBase:
    """The base image for a build: `--base` if given, else the release's published image.

    base: a local path, file:// or http(s):// URL (a remote one needs `sha256`).
    base_url: a mirror laid out like the publisher's site, replacing its address.
    signing_key: an OpenPGP key file trusted instead of the pinned publisher key.
    refresh: re-check the published checksum list even when a verified image is cached.
    """
    sha256 = parse_sha256(sha256)
    if base is not None:
        if base_url is not None:
            raise UsageError("--base and --base-url exclude each other")
        if signing_key is not None:
            raise UsageError("--signing-key checks published sums; it does not apply to --base")
        return operator_base(base, sha256)
    if sha256 is not None:
        raise UsageError(
            "--sha256 checks an operator's --base URL; published images are checked against "
            "their publisher's checksum list"
        )
    return fetch_published(
        source_for(release, arch),
        base_url=parse_base_url(base_url),
        signing_key=signing_key,
        refresh=refresh,
    )


def parse_sha256(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip().removeprefix("sha256:")
    if not HEX64.match(value):
        raise UsageError(f"--sha256 must be 64 hex digits, not {text!r}")
    return value.lower()


def parse_base_url(url: str | None) -> str | None:
    if url is None:
        return None
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise UsageError(f"--base-url must be an http(s):// URL, not {url!r}")
    return url.rstrip("/")


# --- the publisher's image -------------------------------------------------------------------


def fetch_published(
    source: Source,
    *,
    base_url: str | None = None,
    signing_key: Path | None = None,
    refresh: bool = False,
) -> FetchedBase:
    """The verified published image of `source`: from the cache without network unless
    `refresh`, else after checking the published sums (and their signature)."""
    image_url = source.image_url(base_url)
    sums_url = source.sums_url(base_url)
    # A mirror that re-signs a list its publisher leaves unsigned puts the signature where
    # Ubuntu does: `<sums>.gpg`.
    sig_name = source.signature or (f"{source.sums}.gpg" if signing_key else None)
    sig_url = source.signature_url(base_url, sig_name)
    keyring, pinned = _trust(source, signing_key) if sig_url else (b"", ())
    entry = _Entry.for_key(
        source.image_name,
        {
            "url": image_url,
            "sums": sums_url,
            "signature": sig_url,
            "keyring": hashlib.sha256(keyring).hexdigest() if sig_url else None,
        },
    )
    with locked(entry.lock, image_url):
        if not refresh:
            cached = entry.load()
            if cached is not None:
                log.info("using the cached %s (no network; --refresh re-checks)", cached.path)
                return cached
        session = make_session()
        digest, signer = _published_digest(session, source, base_url, sig_url, keyring, pinned)
        result = FetchedBase(
            path=entry.image(source.algo, digest),
            url=image_url,
            algo=source.algo,
            digest=digest,
            signed=sig_url is not None,
            signer=signer,
            origin=Origin.PUBLISHED,
        )
        if not entry.intact(result):
            entry.fetch(
                session,
                result,
                expected_from=source.sums,
                not_found=f"release {source.release} not published at {image_url}",
            )
        entry.save(result)
        return result


def _published_digest(
    session: requests.Session,
    source: Source,
    base_url: str | None,
    sig_url: str | None,
    keyring: bytes,
    pinned: tuple[str, ...],
) -> tuple[str, str | None]:
    """(the image's digest from the published list, the list's signer) once the list's
    signature, where one is required, checked out."""
    sums_url, where = source.sums_url(base_url), source.directory_url(base_url)
    try:
        sums = fetch_small(session, sums_url)
    except NotFoundError:
        raise DownloadError(
            f"release {source.release} not published at {where} (no {source.sums})"
        ) from None
    signer = None
    if sig_url is not None:
        try:
            signature = fetch_small(session, sig_url)
        except NotFoundError:
            raise DownloadError(
                f"{sums_url} is not signed (no {sig_url.rsplit('/', 1)[-1]} beside it) and a "
                "signature is required; nothing was downloaded"
            ) from None
        signer = verify_signature(sums, signature, keyring, pinned, what=sums_url)
        log.info("%s: good signature by %s", source.sums, signer)
    else:
        log.info(
            "%s signs no checksum list for %s; the image is checked against %s only and "
            "recorded as unsigned",
            source.publisher,
            source.release,
            source.sums,
        )
    try:
        listed = parse_sums(sums.decode("utf-8", errors="replace"), source.algo)
    except ValueError as exc:
        raise DownloadError(f"{sums_url}: {exc}") from None
    digest = listed.get(source.image_name)
    if digest is None:
        raise DownloadError(
            f"release {source.release} not published at {where} "
            f"({source.sums} does not list {source.image_name})"
        )
    return digest, signer


def _trust(source: Source, signing_key: Path | None) -> tuple[bytes, tuple[str, ...]]:
    """(keyring for gpgv, fingerprints the signer must have; empty = any key in the keyring)."""
    if signing_key is not None:
        return _read_keyring(signing_key, "--signing-key"), ()
    fingerprints = " or ".join(source.fingerprints) or "its fingerprint"
    if source.key_file is None or not source.key_file.is_file():
        raise UsageError(
            f"{source.publisher} ({fingerprints}) is not in this project"
            f"{f' at {source.key_file}' if source.key_file else ''}; "
            "pass --signing-key FILE with that key"
        )
    return _read_keyring(source.key_file, "key file"), source.fingerprints


def _read_keyring(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        keyring = dearmor(data)
    except (binascii.Error, ValueError):
        keyring = b""
    if not keyring:
        raise UsageError(f"{what} {path} holds no OpenPGP public key")
    return keyring


# --- the operator's image --------------------------------------------------------------------


def operator_base(base: str, sha256: str | None) -> FetchedBase:
    """`--base`: a local file is the operator's and trusted as it is (checked against --sha256
    when given); a remote one is downloaded into the cache and must match --sha256."""
    parts = urlsplit(base)
    if parts.scheme in ("http", "https"):
        if sha256 is None:
            raise UsageError(
                f"--base {base} needs --sha256 HEX: a remote image is used only once its "
                "checksum matches"
            )
        return _operator_remote(base, sha256)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"--base {base}: a file:// URL must name a local file")
        path = Path(unquote(parts.path))
    elif parts.scheme and len(parts.scheme) > 1:  # one letter would be a Windows drive
        raise UsageError(f"--base takes a path, file:// or http(s):// URL, not {base!r}")
    else:
        path = Path(base).expanduser()
    path = path.absolute()
    if not path.is_file():
        raise UsageError(f"base image {path} does not exist")
    if sniff_disk_image(path) is None:
        raise UsageError(f"base image {path} is not a disk image ({not_a_disk_hint(path)})")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256:
        raise DownloadError(f"base image {path} has sha256 {digest}, not the --sha256 given")
    return FetchedBase(
        path=path,
        url=path.as_uri(),
        algo=HashAlgo.SHA256,
        digest=digest,
        signed=False,
        signer=None,
        origin=Origin.OPERATOR,
    )


def _operator_remote(url: str, sha256: str) -> FetchedBase:
    name = Path(unquote(urlsplit(url).path)).name or "base.img"
    entry = _Entry.for_key(name, {"url": url, "sha256": sha256})
    result = FetchedBase(
        path=entry.image(HashAlgo.SHA256, sha256),
        url=url,
        algo=HashAlgo.SHA256,
        digest=sha256,
        signed=False,
        signer=None,
        origin=Origin.OPERATOR,
    )
    with locked(entry.lock, url):
        # Content-addressed by the operator's checksum: a cached copy needs no network.
        if not entry.intact(result):
            entry.fetch(
                make_session(), result, expected_from="--sha256", not_found=f"{url} not found"
            )
        entry.save(result)
    return result


# --- the cache -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    directory: Path
    lock: Path
    name: str

    @classmethod
    def for_key(cls, name: str, inputs: dict[str, Any]) -> _Entry:
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
        root = cache_dir()
        directory = root / "downloads" / f"{name}-{key}"
        return cls(directory, root / "locks" / f"{name}-{key}.lock", name)

    def image(self, algo: HashAlgo, digest: str) -> Path:
        return self.directory / f"{algo}-{digest}-{self.name}"

    def intact(self, fb: FetchedBase) -> bool:
        """The cached file is there and still has its digest (a disk can rot; re-hashing costs
        a second or two against a build of minutes)."""
        if not fb.path.is_file():
            return False
        if hash_file(fb.path, fb.algo) == fb.digest:
            return True
        log.warning("cached %s no longer matches its %s; fetching it again", fb.path, fb.algo)
        fb.path.unlink(missing_ok=True)
        return False

    def load(self) -> FetchedBase | None:
        """The recorded verified image, or None (nothing recorded, or the file is gone/changed)."""
        try:
            doc = json.loads((self.directory / RECORD).read_text())
            fb = FetchedBase.from_record(doc)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # The file is always the one in this entry (the cache may have moved since).
        fb = replace(fb, path=self.directory / fb.path.name)
        return fb if self.intact(fb) else None

    def save(self, fb: FetchedBase) -> None:
        text = json.dumps(fb.to_record(), indent=2, sort_keys=True) + "\n"
        write_atomically(self.directory / RECORD, text.encode())

    def fetch(
        self, session: requests.Session, fb: FetchedBase, *, expected_from: str, not_found: str
    ) -> None:
        """Download fb.url to fb.path through a .part; only a file with fb's digest that looks
        like a disk image is renamed into place, anything else is deleted."""
        self.directory.mkdir(parents=True, exist_ok=True)
        part = part_path(fb.path)
        try:
            download(session, fb.url, part)
        except NotFoundError:
            self._tidy()
            raise DownloadError(not_found) from None
        except BaseException:
            self._tidy()  # a network failure keeps the .part for the next run to resume
            raise
        try:
            got = hash_file(part, fb.algo)
            if got != fb.digest:
                raise DownloadError(
                    f"checksum mismatch for {fb.url}: {fb.algo} {got[:16]}..., "
                    f"{expected_from} says {fb.digest[:16]}...; the download was deleted"
                )
            if sniff_disk_image(part) is None:
                raise DownloadError(
                    f"{fb.url} is not a disk image ({not_a_disk_hint(part)}); "
                    "the download was deleted"
                )
            publish(part, fb.path)
        finally:
            part.unlink(missing_ok=True)
            self._tidy()
        # Other .part files here are for digests the publisher no longer lists.
        for stale in self.directory.glob("*.part"):
            stale.unlink(missing_ok=True)

    def _tidy(self) -> None:
        """Remove the entry's directory when a failure left it empty."""
        with contextlib.suppress(OSError):  # not empty: a .part to resume, or verified files
            self.directory.rmdir()
