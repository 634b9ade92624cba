"""HTTP downloads that can be trusted: retried, resumable, locked, checked before they are kept.

The pieces fetch.py puts together: small files (checksum lists, signatures) fetched whole, large
files streamed to a `.part` file and resumed with a Range request, an OpenPGP check of a detached
signature with gpgv, hashing, a disk-image sniff, an flock per cache entry, and the atomic rename
that is the only way a file enters the cache.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from assembler import __version__, leftovers, progress
from assembler.errors import CommandError, DownloadError
from assembler.run import run
from assembler.sources import HashAlgo

log = logging.getLogger(__name__)

# Read size of a download: what a broken connection can lose (urllib3 drops a partly filled
# read), and how often the progress bar can move.
CHUNK = 64 * 1024
MIB = 1024 * 1024
# Checksum lists and signatures are a few KiB; a larger answer is not one of them.
SMALL_FILE_LIMIT = 16 * MIB


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries per request; a body that keeps arriving is not counted against it
    backoff_s: float = 1.0  # doubled after each failed try
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0  # between two reads, not for the whole body


# Read at call time (`policy or DEFAULT_POLICY`), so tests can swap in a fast one.
DEFAULT_POLICY = RetryPolicy()


class NotFoundError(DownloadError):
    """404/410: the file is not published at that URL; fetch.py names the release."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"{url} not found (404)")


class UnreachableError(DownloadError):
    """No connection to the host after every retry."""


def host_of(url: str) -> str:
    return urlsplit(url).netloc or url


def make_session() -> requests.Session:
    """A session that honours HTTP(S)_PROXY/NO_PROXY from the environment (requests' trust_env)."""
    session = requests.Session()
    session.headers["User-Agent"] = f"trove-image-assembler/{__version__}"
    # Byte offsets in Range requests and Content-Length must be those of the file itself.
    session.headers["Accept-Encoding"] = "identity"
    return session


class _ServerError(Exception):
    """A 5xx answer, worth retrying."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        self.reason = response.reason
        super().__init__(f"{response.status_code} {response.reason}")


class _BrokenBody(Exception):
    """The connection ended before the announced length arrived."""


def _get(
    session: requests.Session, url: str, policy: RetryPolicy, headers: dict[str, str] | None = None
) -> requests.Response:
    """One streaming GET; raises NotFoundError, _ServerError, DownloadError for other 4xx, and
    lets requests' connection errors through for the caller's retry loop."""
    response = session.get(
        url,
        headers=headers or {},
        stream=True,
        timeout=(policy.connect_timeout_s, policy.read_timeout_s),
    )
    status = response.status_code
    if status < 400 or status == 416:  # 416: the caller's .part may already be complete
        return response
    response.close()
    if status in (404, 410):
        raise NotFoundError(url)
    if status >= 500:
        raise _ServerError(response)
    raise DownloadError(f"{host_of(url)} answered {status} {response.reason} for {url}")


def _final_error(url: str, exc: BaseException, policy: RetryPolicy) -> DownloadError:
    """The one-line error for a request that failed every retry."""
    host = host_of(url)
    tries = f"{policy.attempts} tries"
    if isinstance(exc, _ServerError):
        return DownloadError(
            f"{host} answered {exc.status} {exc.reason} for {url} ({tries}); "
            "try again later or use --base PATH"
        )
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | _BrokenBody):
        return DownloadError(f"the connection to {host} kept breaking off fetching {url}")
    if isinstance(exc, requests.exceptions.SSLError):
        # Not a network outage: retrying or going offline is not the fix.
        return DownloadError(f"TLS with {host} failed: {_reason(exc)}")
    if isinstance(exc, requests.exceptions.ProxyError):
        return UnreachableError(
            f"cannot reach {host} through the proxy set in the environment ({_reason(exc)}); "
            "use --base PATH for offline builds"
        )
    if isinstance(exc, requests.Timeout):
        return UnreachableError(
            f"cannot reach {host} (timed out, {tries}); use --base PATH for offline builds"
        )
    return UnreachableError(f"cannot reach {host}; use --base PATH for offline builds")


def _reason(exc: BaseException) -> str:
    """The innermost message of a requests/urllib3 exception chain, which is the useful one."""
    for _ in range(6):  # requests error -> MaxRetryError -> its reason -> ...
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        if inner is None:
            break
        exc = inner
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# Worth another try: the network, a busy server, a body cut short (ChunkedEncodingError is what
# requests raises when the connection ends before the announced length).
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    _ServerError,
)


def _pause(policy: RetryPolicy, failures: int, url: str, exc: BaseException) -> None:
    delay = policy.backoff_s * 2 ** (failures - 1)
    log.info("%s: %s; retrying in %.1f s", host_of(url), _describe(exc), delay)
    time.sleep(delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broke off"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return str(exc) or type(exc).__name__


def fetch_small(session: requests.Session, url: str, policy: RetryPolicy | None = None) -> bytes:
    """The whole body of a small file (checksum list, signature), with retries."""
    policy = policy or DEFAULT_POLICY
    failures = 0
    while True:
        try:
            with _get(session, url, policy) as response:
                body = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > SMALL_FILE_LIMIT:
                        raise DownloadError(f"{url} is larger than {SMALL_FILE_LIMIT // MIB} MiB")
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) != len(body):
                    raise _BrokenBody(f"{len(body)} of {length} bytes")
                return bytes(body)
        except (*_TRANSIENT, _BrokenBody) as exc:
            failures += 1
            if failures >= policy.attempts:
                raise _final_error(url, exc, policy) from exc
            _pause(policy, failures, url, exc)
        except requests.RequestException as exc:  # e.g. an invalid URL or proxy setting
            raise DownloadError(f"cannot fetch {url}: {exc}") from exc


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


class _Restart(Exception):
    """The .part cannot be resumed from this answer; it is dropped and the file fetched anew."""


def download(
    session: requests.Session,
    url: str,
    part: Path,
    policy: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> int:
    """Stream `url` into `part`, resuming what is already there; return its final size.

    A server that answers a Range request with 200 sends the whole file, so `part` is rewritten
    from the start. On a network failure `part` stays for the next run to resume; on a full disk
    it is removed, since it is what filled the disk. The caller verifies the result.
    """
    policy = policy or DEFAULT_POLICY
    progress = progress or Progress(Path(urlsplit(url).path).name)
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        received = 0
        responded = False
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with _get(session, url, policy, headers) as response:
                responded = True
                offset, total = _plan(response, have, url)
                if offset is None:  # 416 for a .part that is already whole
                    return have
                _check_space(part.parent, None if total is None else total - offset, url)
                progress.start(total, offset)
                with part.open("r+b" if part.exists() else "wb") as out:
                    out.seek(offset)
                    out.truncate()
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        progress.advance(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            size = offset + received
            if total is not None and size != total:
                raise _BrokenBody(f"{size} of {total} bytes")
            progress.finish()
            return size
        except _Restart as exc:
            progress.abort()
            log.info("%s; downloading %s from the start", exc, url)
            part.unlink(missing_ok=True)
            failure: BaseException = exc
        except (*_TRANSIENT, _BrokenBody) as exc:
            progress.abort()
            failure = exc
        except requests.RequestException as exc:  # e.g. an invalid URL or proxy setting
            progress.abort()
            raise DownloadError(f"cannot fetch {url}: {exc}") from exc
        except OSError as exc:
            progress.abort()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"no space left in {part.parent} for {url}; free some or point "
                    "XDG_CACHE_HOME at a larger disk"
                ) from exc
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
        # A body that keeps arriving, if in pieces, is progress: only idle tries are counted.
        failures = 1 if received else failures + 1
        if failures >= policy.attempts:
            kept = part.stat().st_size if part.exists() else 0
            if not responded:
                final = _final_error(url, failure, policy)
                if kept:
                    final = type(final)(f"{final} ({_size(kept)} kept to resume next time)")
                raise final from failure
            raise DownloadError(
                f"download of {url} kept breaking off ({_size(kept)} kept); run again to "
                "resume, or use --base PATH"
            ) from failure
        _pause(policy, failures, url, failure)


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _plan(response: requests.Response, have: int, url: str) -> tuple[int | None, int | None]:
    """(offset to write at, total size or None) for the answer to a possibly ranged GET;
    offset None: the .part is already whole."""
    content_range = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    total_text = content_range.group(3) if content_range else ""
    if response.status_code == 416:
        if total_text.isdigit() and int(total_text) == have:
            return None, have
        raise _Restart(f"{host_of(url)} refused to resume at {_size(have)}")
    if response.status_code == 206:
        start = content_range.group(1) if content_range else None
        if start is None or int(start) != have:
            raise _Restart(f"{host_of(url)} answered a resume with another range")
        log.info("resuming %s at %s", url, _size(have))
        return have, int(total_text) if total_text.isdigit() else None
    if have:
        log.info("%s ignores Range requests; downloading again from the start", host_of(url))
    length = response.headers.get("Content-Length", "")
    return 0, int(length) if length.isdigit() else None


def _check_space(directory: Path, needed: int | None, url: str) -> None:
    if needed is None:
        return
    free = _free_bytes(directory)
    if needed > free:
        raise DownloadError(
            f"{url} needs {_size(needed)} but {directory} has {_size(free)} free; free some "
            "or point XDG_CACHE_HOME at a larger disk"
        )


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """A download's bar on the terminal's live view (progress.py); anywhere else, a log line
    per ~10%."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.total: int | None = None
        self.done = 0
        self.start_done = 0
        self.started = 0.0
        self.next_log_fraction = 0.1
        self.bar: progress.Bar | None = None

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.started = time.monotonic()
        self.next_log_fraction = 0.1 * (int(10 * done / total) + 1) if total else 0.1
        self.bar = progress.bar(self.label, total, done)
        if self.bar is None:
            size = _size(total) if total is not None else "unknown size"
            from_ = f" from {_size(done)}" if done else ""
            log.info("downloading %s (%s)%s", self.label, size, from_)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(n)
        elif self.total and self.done / self.total >= self.next_log_fraction:
            self.next_log_fraction = 0.1 * (int(10 * self.done / self.total) + 1)
            log.info("%s: %s", self.label, self.line(time.monotonic()))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = (self.done - self.start_done) / elapsed
        if self.total:
            pct = min(100, int(100 * self.done / self.total))
            eta = (self.total - self.done) / rate if rate > 0 else None
            eta_text = f"ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else "ETA -"
            return (
                f"{pct:3d}% {_size(self.done)} / {_size(self.total)}  {_size(rate)}/s  {eta_text}"
            )
        return f"{_size(self.done)}  {_size(rate)}/s"

    def finish(self) -> None:
        self.abort()
        elapsed = time.monotonic() - self.started
        log.info("downloaded %s: %s in %.1f s", self.label, _size(self.done), elapsed)

    def abort(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def hash_file(path: Path, algo: HashAlgo) -> str:
    digest = hashlib.new(str(algo))
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


# Magic numbers of the disk image formats qemu-img reads that cloud images come in.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"KDMV", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vhd"),
    (512, b"EFI PART", "raw"),  # GPT header
    (510, b"\x55\xaa", "raw"),  # MBR boot signature
)


def sniff_disk_image(path: Path) -> str | None:
    """The image format from its first bytes, or None when it is not a disk image."""
    with path.open("rb") as f:
        head = f.read(1024)
    for offset, magic, fmt in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    return None


def not_a_disk_hint(path: Path) -> str:
    """Why a file is not a disk image, in a few words: mirrors and portals answer with HTML."""
    with path.open("rb") as f:
        head = f.read(256).lstrip()
    if head[:1] == b"<":
        return "it is an HTML or XML page"
    if not head:
        return "it is empty"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "it is a text file"
    return f"it starts with {head[:8].hex()}"


def dearmor(data: bytes) -> bytes:
    """OpenPGP ASCII armor (one or more PUBLIC KEY blocks) to binary packets, which is the
    keyring format gpgv reads; binary input is returned as it is."""
    if b"-----BEGIN PGP" not in data:
        return data
    out = bytearray()
    block: list[str] | None = None
    in_headers = False
    for line in data.decode("ascii", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN PGP"):
            block, in_headers = [], True
        elif line.startswith("-----END PGP") and block is not None:
            out += base64.b64decode("".join(block), validate=True)
            block = None
        elif block is not None:
            if in_headers and (":" in line or not line):  # "Version: ..." then a blank line
                in_headers = bool(line)
                continue
            in_headers = False
            if line.startswith("="):  # the CRC-24 line; gpgv checks the packets themselves
                continue
            block.append(line)
    return bytes(out)


def verify_signature(
    data: bytes, signature: bytes, keyring: bytes, pinned: Sequence[str], what: str
) -> str:
    """Check a detached OpenPGP signature of `data` with gpgv against `keyring` only; return the
    signing primary key's fingerprint. With `pinned`, that fingerprint must be one of them."""
    with tempfile.TemporaryDirectory(prefix="assembler-gpgv-") as tmp:
        home = Path(tmp)
        (home / "keyring.gpg").write_bytes(keyring)
        (home / "data").write_bytes(data)
        (home / "data.sig").write_bytes(signature)
        try:
            # --homedir and an explicit --keyring: nothing from the user's GnuPG setup is trusted.
            status = run(
                [
                    "gpgv", "--homedir", home, "--status-fd", "1",
                    "--keyring", home / "keyring.gpg", home / "data.sig", home / "data",
                ],
                timeout=60,
            )  # fmt: skip
        except CommandError as exc:
            raise DownloadError(f"signature check of {what} failed: {_gpgv_reason(exc)}") from exc
    signers = [
        fields[-1].upper()
        for fields in (line.split() for line in status.splitlines())
        if len(fields) >= 11 and fields[:2] == ["[GNUPG:]", "VALIDSIG"]
    ]
    if not signers:
        raise DownloadError(f"signature check of {what} failed: gpgv reported no valid signature")
    if pinned:
        wanted = {p.upper() for p in pinned}
        matching = [s for s in signers if s in wanted]
        if not matching:
            raise DownloadError(
                f"signature check of {what} failed: signed by {signers[0]}, "
                f"not the pinned key {', '.join(sorted(wanted))}"
            )
        return matching[0]
    return signers[0]


def _gpgv_reason(exc: CommandError) -> str:
    text = exc.stderr
    if "BAD signature" in text:
        return "BAD signature (the file was altered or the signature is not for it)"
    if "No public key" in text or "public key not found" in text:
        return "signed by a key that is not trusted here (see --signing-key)"
    if "no valid OpenPGP data" in text or "invalid packet" in text:
        return "the signature file is not an OpenPGP signature"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else str(exc)


@contextmanager
def locked(lock_path: Path, what: str) -> Iterator[None]:
    """An exclusive flock for one cache entry: concurrent builds download it once. The kernel
    drops the lock when a holder dies, so a killed download never wedges the next one."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process fetching %s", what)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def publish(src: Path, dest: Path) -> None:
    """Move a verified file into the cache in one step: readers see all of it or nothing."""
    with src.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself survive a crash
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = leftovers.partial(path)
    try:
        tmp.write_bytes(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
