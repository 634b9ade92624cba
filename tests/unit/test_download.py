"""Base image download against real HTTP servers on 127.0.0.1, with a throwaway OpenPGP key.

Nothing here may leave loopback: an autouse fixture refuses any other connection, proxies from
the environment are switched off, and every URL is the test server's.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from assembler import download, progress
from assembler.distros import RELEASES
from assembler.download import Progress, RetryPolicy
from assembler.errors import DownloadError, UsageError
from assembler.fetch import FetchedBase, Origin, fetch_published, resolve_base
from assembler.sources import source_for

pytestmark = pytest.mark.skipif(
    shutil.which("gpg") is None or shutil.which("gpgv") is None, reason="needs gpg and gpgv"
)

JAMMY = RELEASES["jammy"]
BOOKWORM = RELEASES["bookworm"]
UBUNTU_DIR = "/ubuntu/jammy/current"
UBUNTU_IMAGE = f"{UBUNTU_DIR}/jammy-server-cloudimg-amd64.img"
DEBIAN_DIR = "/debian/bookworm/latest"
DEBIAN_IMAGE = f"{DEBIAN_DIR}/debian-12-genericcloud-amd64.qcow2"
IMAGE_SIZE = 768 * 1024 + 123  # several chunks, and not a round number


# --- keep every connection on loopback -----------------------------------------------------------

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
        "127.0.0.1",
        "::1",
    ):
        raise AssertionError(f"test tried to connect to {address!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Fast retries: three tries, 10 ms apart.
    monkeypatch.setattr(
        download, "DEFAULT_POLICY", RetryPolicy(3, 0.01, connect_timeout_s=2, read_timeout_s=3)
    )


def cache_files(tmp_path: Path) -> list[str]:
    """Every file in the download cache (locks live beside it, not in it)."""
    root = tmp_path / "cache" / "trove-image-assembler" / "downloads"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- a throwaway signing key ---------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    home: Path
    fpr: str
    public: Path  # armored public key

    def sign(self, data: bytes) -> bytes:
        proc = subprocess.run(
            [
                *("gpg", "--homedir", str(self.home), "--batch", "--local-user", self.fpr),
                *("--detach-sign", "--output", "-"),
            ],
            input=data,
            capture_output=True,
            check=True,
        )
        return proc.stdout


def _make_key(home: Path, name: str) -> Key:
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    subprocess.run(
        [
            *(*gpg, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@invalid>"),
            *("ed25519", "sign", "never"),
        ],
        capture_output=True,
        check=True,
    )
    colons = subprocess.run(
        [*gpg, "--with-colons", "--list-keys"], capture_output=True, text=True, check=True
    ).stdout
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    public = home / "public.asc"
    armored = subprocess.run(
        [*gpg, "--armor", "--export", fpr], capture_output=True, check=True
    ).stdout
    public.write_bytes(armored)
    return Key(home, fpr, public)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    # Short paths: gpg-agent's socket lives in the home directory.
    root = tmp_path_factory.mktemp("gpg")
    made = (_make_key(root / "a", "mirror"), _make_key(root / "b", "stranger"))
    yield made
    for key in made:
        subprocess.run(
            ["gpgconf", "--homedir", str(key.home), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )


@pytest.fixture
def key(keys: tuple[Key, Key]) -> Key:
    return keys[0]


# --- the loopback site ---------------------------------------------------------------------------


@dataclass
class Site:
    """What the server serves and how it misbehaves; tests change it between requests."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    drop_path: str | None = None  # cut the body of this path...
    drop_at: int = 0  # ...at this offset of the file...
    drops: int = 0  # ...this many times
    fail: dict[str, list[int]] = field(default_factory=dict)  # statuses to answer first
    chunk_delay_s: float = 0.0
    log: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GETs of `path`, in order."""
        return [rng for p, rng in self.log if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        site = self.server.site
        path = urlsplit(self.path).path
        rng = self.headers.get("Range")
        with site.lock:
            site.log.append((path, rng))
            pending = site.fail.get(path)
            status = pending.pop(0) if pending else None
            body = site.files.get(path)
            cut = site.drop_at if site.drop_path == path and site.drops > 0 else None
            if cut is not None:
                site.drops -= 1
        if status is not None:
            self.send_error(status)
            return
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and site.ranges:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes" if site.ranges else "none")
        self.end_headers()
        payload = body[start:] if cut is None else body[start:cut]
        for i in range(0, len(payload), 64 * 1024):
            self.wfile.write(payload[i : i + 64 * 1024])
            self.wfile.flush()
            if site.chunk_delay_s:
                time.sleep(site.chunk_delay_s)
        # With a cut, returning here closes an HTTP/1.0 connection short of Content-Length.


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Site) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-body are part of the tests


@dataclass
class Loopback:
    site: Site
    server: _Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    site = Site()
    server = _Server(site)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    lb = Loopback(site, server, thread)
    yield lb
    lb.stop()


def resumed_at(range_header: str | None) -> int:
    """The offset of a `bytes=N-` request. A cut connection loses at most the read in flight
    (64 KiB), so a resume starts at or a little before the cut."""
    match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
    assert match, range_header
    return int(match.group(1))


def disk_image(seed: int) -> bytes:
    """A small file that starts like a qcow2, which is all the download checks."""
    body = hashlib.shake_256(str(seed).encode()).digest(IMAGE_SIZE - 8)
    return b"QFI\xfb\x00\x00\x00\x03" + body


def publish_ubuntu(site: Site, key: Key | None, image: bytes, listed: bytes | None = None) -> str:
    """Lay out a jammy release like cloud-images.ubuntu.com; return the image's sha256."""
    digest = hashlib.sha256(listed if listed is not None else image).hexdigest()
    other = hashlib.sha256(b"other").hexdigest()
    sums = (
        f"{other} *jammy-server-cloudimg-amd64-root.tar.xz\n"
        f"{digest} *jammy-server-cloudimg-amd64.img\n"
    ).encode()
    site.files[UBUNTU_IMAGE] = image
    site.files[f"{UBUNTU_DIR}/SHA256SUMS"] = sums
    if key is not None:
        site.files[f"{UBUNTU_DIR}/SHA256SUMS.gpg"] = key.sign(sums)
    return hashlib.sha256(image).hexdigest()


def fetch_jammy(lb: Loopback, key: Key | None, refresh: bool = False) -> FetchedBase:
    return resolve_base(
        JAMMY,
        base=None,
        sha256=None,
        base_url=f"{lb.url}/ubuntu",
        signing_key=key.public if key else None,
        refresh=refresh,
    )


# --- the cases the issue lists -------------------------------------------------------------------


def test_good_path_downloads_verifies_and_caches(
    loopback: Loopback, key: Key, tmp_path: Path
) -> None:
    image = disk_image(1)
    sha = publish_ubuntu(loopback.site, key, image)
    fb = fetch_jammy(loopback, key)
    assert fb.path.read_bytes() == image
    assert (fb.sha256, fb.signed, fb.signer, fb.origin) == (sha, True, key.fpr, Origin.PUBLISHED)
    assert fb.url == f"{loopback.url}{UBUNTU_IMAGE}"
    assert fb.manifest() == {
        "origin": "published",
        "path": str(fb.path),
        "url": fb.url,
        "sha256": sha,
        "signed": True,
        "signer": key.fpr,
    }
    # The verified image and its record; no .part, no lock in the cache.
    assert sorted(Path(f).name for f in cache_files(tmp_path)) == [
        "record.json",
        f"sha256-{sha}-jammy-server-cloudimg-amd64.img",
    ]


def test_debian_is_checked_against_sha512sums_and_recorded_unsigned(
    loopback: Loopback,
) -> None:
    image = disk_image(2)
    sha512 = hashlib.sha512(image).hexdigest()
    loopback.site.files[DEBIAN_IMAGE] = image
    loopback.site.files[f"{DEBIAN_DIR}/SHA512SUMS"] = (
        f"{hashlib.sha512(b'json').hexdigest()}  debian-12-genericcloud-amd64.json\n"
        f"{sha512}  debian-12-genericcloud-amd64.qcow2\n"
    ).encode()
    fb = resolve_base(BOOKWORM, None, None, f"{loopback.url}/debian", None, False)
    assert (fb.sha512, fb.sha256, fb.signed, fb.signer) == (sha512, None, False, None)
    assert fb.manifest()["sha512"] == sha512
    assert fb.path.read_bytes() == image


def test_a_mirror_may_sign_what_debian_leaves_unsigned(loopback: Loopback, key: Key) -> None:
    image = disk_image(23)
    sums = f"{hashlib.sha512(image).hexdigest()}  debian-12-genericcloud-amd64.qcow2\n".encode()
    loopback.site.files[DEBIAN_IMAGE] = image
    loopback.site.files[f"{DEBIAN_DIR}/SHA512SUMS"] = sums
    with pytest.raises(DownloadError, match=r"SHA512SUMS is not signed \(no SHA512SUMS\.gpg"):
        resolve_base(BOOKWORM, None, None, f"{loopback.url}/debian", key.public, False)
    loopback.site.files[f"{DEBIAN_DIR}/SHA512SUMS.gpg"] = key.sign(sums)
    fb = resolve_base(BOOKWORM, None, None, f"{loopback.url}/debian", key.public, False)
    assert (fb.signed, fb.signer) == (True, key.fpr)


def test_connection_dropped_mid_body_is_resumed(loopback: Loopback, key: Key) -> None:
    image = disk_image(3)
    publish_ubuntu(loopback.site, key, image)
    site = loopback.site
    site.drop_path, site.drop_at, site.drops = UBUNTU_IMAGE, 300_000, 1
    fb = fetch_jammy(loopback, key)
    assert fb.path.read_bytes() == image
    first, resume = site.gets(UBUNTU_IMAGE)
    assert first is None and 0 < resumed_at(resume) <= 300_000


def test_server_without_range_support_gets_a_full_download(loopback: Loopback, key: Key) -> None:
    image = disk_image(4)
    publish_ubuntu(loopback.site, key, image)
    site = loopback.site
    site.ranges = False
    site.drop_path, site.drop_at, site.drops = UBUNTU_IMAGE, 200_000, 1
    fb = fetch_jammy(loopback, key)
    assert fb.path.read_bytes() == image
    # The resume was asked for, answered with the whole file, and written from the start.
    first, resume = site.gets(UBUNTU_IMAGE)
    assert first is None and 0 < resumed_at(resume) <= 200_000


def test_interrupted_download_resumes_in_the_next_run(
    loopback: Loopback, key: Key, tmp_path: Path
) -> None:
    image = disk_image(5)
    sha = publish_ubuntu(loopback.site, key, image)
    site = loopback.site
    # Every try breaks off at the same offset: no progress after the first.
    site.drop_path, site.drop_at, site.drops = UBUNTU_IMAGE, 250_000, 3
    with pytest.raises(DownloadError, match=r"kept breaking off .*run again to resume"):
        fetch_jammy(loopback, key)
    assert [Path(f).name for f in cache_files(tmp_path)] == [
        f"sha256-{sha}-jammy-server-cloudimg-amd64.img.part"
    ]
    kept = next(tmp_path.rglob("*.part")).stat().st_size
    assert 0 < kept <= 250_000
    fb = fetch_jammy(loopback, key)
    assert fb.path.read_bytes() == image
    assert site.gets(UBUNTU_IMAGE)[-1] == f"bytes={kept}-"
    assert not any(f.endswith(".part") for f in cache_files(tmp_path))


def test_wrong_checksum_deletes_the_download(loopback: Loopback, key: Key, tmp_path: Path) -> None:
    publish_ubuntu(loopback.site, key, disk_image(6), listed=b"something else")
    with pytest.raises(DownloadError, match=r"checksum mismatch for .*the download was deleted"):
        fetch_jammy(loopback, key)
    assert cache_files(tmp_path) == []


def test_bad_signature_is_refused_before_downloading(
    loopback: Loopback, key: Key, tmp_path: Path
) -> None:
    publish_ubuntu(loopback.site, key, disk_image(7))
    sums = f"{UBUNTU_DIR}/SHA256SUMS"
    loopback.site.files[sums] += b"0" * 64 + b" *extra.img\n"  # altered after signing
    with pytest.raises(DownloadError, match=r"signature check of .*SHA256SUMS failed: BAD"):
        fetch_jammy(loopback, key)
    assert loopback.site.gets(UBUNTU_IMAGE) == []
    assert cache_files(tmp_path) == []


def test_signature_by_another_key_is_refused(
    loopback: Loopback, keys: tuple[Key, Key], tmp_path: Path
) -> None:
    trusted, stranger = keys
    publish_ubuntu(loopback.site, stranger, disk_image(8))
    with pytest.raises(DownloadError, match="not trusted here"):
        fetch_jammy(loopback, trusted)
    assert cache_files(tmp_path) == []


def test_default_path_trusts_only_the_pinned_ubuntu_key(
    loopback: Loopback, key: Key, tmp_path: Path
) -> None:
    # A mirror signing with its own key is refused unless --signing-key names that key.
    publish_ubuntu(loopback.site, key, disk_image(9))
    with pytest.raises(DownloadError, match="not trusted here"):
        fetch_jammy(loopback, None)
    assert cache_files(tmp_path) == []


def test_pinned_fingerprint_is_enforced(loopback: Loopback, key: Key, tmp_path: Path) -> None:
    publish_ubuntu(loopback.site, key, disk_image(10))
    row = replace(source_for(JAMMY), key_file=key.public, fingerprints=("0" * 40,))
    with pytest.raises(DownloadError, match="not the pinned key"):
        fetch_published(row, base_url=f"{loopback.url}/ubuntu")
    assert cache_files(tmp_path) == []
    fb = fetch_published(replace(row, fingerprints=(key.fpr,)), base_url=f"{loopback.url}/ubuntu")
    assert fb.signer == key.fpr


def test_unsigned_sums_where_a_signature_is_required(
    loopback: Loopback, key: Key, tmp_path: Path
) -> None:
    publish_ubuntu(loopback.site, None, disk_image(11))
    with pytest.raises(DownloadError, match=r"SHA256SUMS is not signed .*signature is required"):
        fetch_jammy(loopback, key)
    assert loopback.site.gets(UBUNTU_IMAGE) == []
    assert cache_files(tmp_path) == []


def test_404_names_the_release_and_url(loopback: Loopback, key: Key, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        fetch_jammy(loopback, key)
    assert str(info.value) == (
        f"release jammy not published at {loopback.url}{UBUNTU_DIR} (no SHA256SUMS)"
    )
    # Listed, signed, but the image itself is missing.
    publish_ubuntu(loopback.site, key, disk_image(12))
    del loopback.site.files[UBUNTU_IMAGE]
    with pytest.raises(DownloadError, match=f"release jammy not published at {loopback.url}"):
        fetch_jammy(loopback, key)
    assert cache_files(tmp_path) == []


def test_5xx_is_retried(loopback: Loopback, key: Key) -> None:
    image = disk_image(13)
    publish_ubuntu(loopback.site, key, image)
    loopback.site.fail[f"{UBUNTU_DIR}/SHA256SUMS"] = [503]
    loopback.site.fail[UBUNTU_IMAGE] = [500, 502]
    assert fetch_jammy(loopback, key).path.read_bytes() == image


def test_persistent_5xx_is_one_line(loopback: Loopback, key: Key, tmp_path: Path) -> None:
    publish_ubuntu(loopback.site, key, disk_image(14))
    loopback.site.fail[f"{UBUNTU_DIR}/SHA256SUMS"] = [500] * 3
    with pytest.raises(DownloadError, match=r"answered 500 .* \(3 tries\); try again later"):
        fetch_jammy(loopback, key)
    assert cache_files(tmp_path) == []


def test_unreachable_host_suggests_base(key: Key, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        resolve_base(JAMMY, None, None, f"http://127.0.0.1:{port}/u", key.public, False)
    assert str(info.value) == (f"cannot reach 127.0.0.1:{port}; use --base PATH for offline builds")
    assert cache_files(tmp_path) == []


def test_tls_failure_is_not_called_unreachable(loopback: Loopback, key: Key) -> None:
    https = loopback.url.replace("http://", "https://")  # TLS to a plain HTTP server
    with pytest.raises(DownloadError, match=r"^TLS with 127\.0\.0\.1:\d+ failed: ") as info:
        resolve_base(JAMMY, None, None, f"{https}/ubuntu", key.public, False)
    assert "\n" not in str(info.value)


def test_cache_hit_with_the_server_gone(loopback: Loopback, key: Key) -> None:
    image = disk_image(15)
    publish_ubuntu(loopback.site, key, image)
    first = fetch_jammy(loopback, key)
    loopback.stop()
    again = fetch_jammy(loopback, key)
    assert again == first
    assert again.path.read_bytes() == image
    # --refresh re-checks the published sums, which needs the server.
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch_jammy(loopback, key, refresh=True)


def test_refresh_picks_up_a_new_image(loopback: Loopback, key: Key) -> None:
    publish_ubuntu(loopback.site, key, disk_image(16))
    old = fetch_jammy(loopback, key)
    new_image = disk_image(17)
    new_sha = publish_ubuntu(loopback.site, key, new_image)
    assert fetch_jammy(loopback, key) == old  # no network without --refresh
    new = fetch_jammy(loopback, key, refresh=True)
    assert new.sha256 == new_sha and new.path.read_bytes() == new_image
    assert fetch_jammy(loopback, key) == new
    # --refresh with nothing new re-checks the sums but downloads nothing.
    gets = len(loopback.site.gets(UBUNTU_IMAGE))
    assert fetch_jammy(loopback, key, refresh=True) == new
    assert len(loopback.site.gets(UBUNTU_IMAGE)) == gets


def test_corrupted_cache_entry_is_fetched_again(loopback: Loopback, key: Key) -> None:
    image = disk_image(18)
    publish_ubuntu(loopback.site, key, image)
    fb = fetch_jammy(loopback, key)
    with fb.path.open("r+b") as f:
        f.seek(1000)
        f.write(b"rot")
    assert fetch_jammy(loopback, key).path.read_bytes() == image
    assert len(loopback.site.gets(UBUNTU_IMAGE)) == 2


def test_truncated_cache_entry_is_fetched_again(loopback: Loopback, key: Key) -> None:
    image = disk_image(23)
    publish_ubuntu(loopback.site, key, image)
    fb = fetch_jammy(loopback, key)
    with fb.path.open("r+b") as f:
        f.truncate(len(image) // 3)
    assert fetch_jammy(loopback, key).path.read_bytes() == image
    assert len(loopback.site.gets(UBUNTU_IMAGE)) == 2


def test_two_builds_at_once_download_once(loopback: Loopback, key: Key) -> None:
    image = disk_image(19)
    publish_ubuntu(loopback.site, key, image)
    loopback.site.chunk_delay_s = 0.02  # ~0.25 s: long enough to overlap
    barrier = threading.Barrier(2)
    results: list[FetchedBase | BaseException] = []

    def build() -> None:
        barrier.wait()
        try:
            results.append(fetch_jammy(loopback, key))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 2 and all(isinstance(r, FetchedBase) for r in results)
    assert results[0] == results[1]
    assert loopback.site.gets(UBUNTU_IMAGE) == [None]
    # The second build found the first one's record under the lock: no second sums fetch.
    assert len(loopback.site.gets(f"{UBUNTU_DIR}/SHA256SUMS")) == 1


def test_killed_download_leaves_the_cache_consistent(
    loopback: Loopback, key: Key, tmp_path: Path
) -> None:
    image = disk_image(20)
    sha = publish_ubuntu(loopback.site, key, image)
    loopback.site.chunk_delay_s = 0.2  # ~2.5 s for the whole image
    script = (
        "import sys; from pathlib import Path\n"
        "from assembler.distros import RELEASES\n"
        "from assembler.fetch import resolve_base\n"
        "resolve_base(RELEASES['jammy'], None, None, sys.argv[1], Path(sys.argv[2]), False)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(NO_PROXY="*", XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, f"{loopback.url}/ubuntu", str(key.public)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = tmp_path / "cache" / "trove-image-assembler" / "downloads"
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            parts = list(root.rglob("*.part"))
            if parts and parts[0].stat().st_size >= 64 * 1024:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the download never started")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Only the resumable .part: no image, no record, nothing that a build could pick up.
    assert [Path(f).name for f in cache_files(tmp_path)] == [
        f"sha256-{sha}-jammy-server-cloudimg-amd64.img.part"
    ]
    kept = next(root.rglob("*.part")).stat().st_size
    loopback.site.chunk_delay_s = 0
    fb = fetch_jammy(loopback, key)
    assert fb.path.read_bytes() == image
    assert loopback.site.gets(UBUNTU_IMAGE)[-1] == f"bytes={kept}-"


def test_a_base_that_is_not_a_disk_image(loopback: Loopback, key: Key, tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html><body>Please log in to the hotel wifi</body></html>\n"
    publish_ubuntu(loopback.site, key, page * 100)
    with pytest.raises(DownloadError, match=r"is not a disk image \(it is an HTML or XML page\)"):
        fetch_jammy(loopback, key)
    assert cache_files(tmp_path) == []


def test_full_disk_is_reported_before_downloading(
    loopback: Loopback, key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_ubuntu(loopback.site, key, disk_image(21))
    monkeypatch.setattr(download, "_free_bytes", lambda directory: 4096)
    with pytest.raises(DownloadError, match=r"needs 768\.1 KiB but .* has 4\.0 KiB free"):
        fetch_jammy(loopback, key)
    assert cache_files(tmp_path) == []


def test_disk_filling_up_mid_download(
    loopback: Loopback, key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_ubuntu(loopback.site, key, disk_image(22))
    real_advance = Progress.advance

    def full(self: Progress, n: int) -> None:
        real_advance(self, n)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Progress, "advance", full)
    with pytest.raises(DownloadError, match=r"no space left in .* for .*XDG_CACHE_HOME"):
        fetch_jammy(loopback, key)
    assert cache_files(tmp_path) == []


# --- the operator's own base ---------------------------------------------------------------------


def test_local_base_is_trusted_as_the_operators(tmp_path: Path) -> None:
    path = tmp_path / "mine.qcow2"
    path.write_bytes(disk_image(30))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    fb = resolve_base(JAMMY, str(path), None, None, None, False)
    assert (fb.path, fb.sha256, fb.signed, fb.origin) == (path, sha, False, Origin.OPERATOR)
    assert fb.url == path.as_uri()
    assert resolve_base(JAMMY, path.as_uri(), sha.upper(), None, None, False) == fb
    assert cache_files(tmp_path) == []  # never copied
    with pytest.raises(DownloadError, match="not the --sha256 given"):
        resolve_base(JAMMY, str(path), "0" * 64, None, None, False)


def test_local_base_must_be_a_disk_image(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    with pytest.raises(UsageError, match=r"is not a disk image \(it is a text file\)"):
        resolve_base(JAMMY, str(notes), None, None, None, False)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_base(JAMMY, str(tmp_path / "nope.img"), None, None, None, False)


def test_remote_base_needs_and_checks_sha256(loopback: Loopback, tmp_path: Path) -> None:
    image = disk_image(31)
    loopback.site.files["/images/custom.qcow2"] = image
    url = f"{loopback.url}/images/custom.qcow2"
    with pytest.raises(UsageError, match="needs --sha256 HEX"):
        resolve_base(JAMMY, url, None, None, None, False)
    with pytest.raises(DownloadError, match=r"checksum mismatch .*--sha256 says 0000"):
        resolve_base(JAMMY, url, "0" * 64, None, None, False)
    assert cache_files(tmp_path) == []
    sha = hashlib.sha256(image).hexdigest()
    fb = resolve_base(JAMMY, url, sha, None, None, False)
    assert (fb.url, fb.sha256, fb.signed, fb.origin) == (url, sha, False, Origin.OPERATOR)
    loopback.stop()
    assert resolve_base(JAMMY, url, sha, None, None, False) == fb  # cached by checksum


@pytest.mark.parametrize(
    ("base", "sha", "base_url", "signing_key", "message"),
    [
        ("x.img", None, "http://m/", None, "--base and --base-url exclude each other"),
        ("x.img", None, None, Path("k.asc"), "does not apply to --base"),
        (None, "0" * 64, None, None, "--sha256 checks an operator's --base URL"),
        ("x.img", "abc", None, None, "--sha256 must be 64 hex digits"),
        (None, None, "ftp://mirror/", None, "--base-url must be an http"),
        ("ftp://host/x.img", None, None, None, "--base takes a path"),
    ],
)
def test_bad_option_combinations(
    base: str | None, sha: str | None, base_url: str | None, signing_key: Path | None, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_base(JAMMY, base, sha, base_url, signing_key, False)


def test_missing_pinned_key_asks_for_signing_key(loopback: Loopback, tmp_path: Path) -> None:
    row = replace(source_for(JAMMY), key_file=tmp_path / "gone.asc")
    with pytest.raises(UsageError) as info:
        fetch_published(row, base_url=f"{loopback.url}/ubuntu")
    message = str(info.value)
    assert "\n" not in message
    assert "pass --signing-key FILE" in message and row.fingerprints[0] in message
    assert loopback.site.log == []


def test_signing_key_that_is_not_a_key(loopback: Loopback, tmp_path: Path) -> None:
    junk = tmp_path / "junk.asc"
    junk.write_bytes(b"")
    with pytest.raises(UsageError, match="holds no OpenPGP public key"):
        resolve_base(JAMMY, None, None, f"{loopback.url}/ubuntu", junk, False)


# --- progress ------------------------------------------------------------------------------------


def test_progress_bar_on_the_terminal_view() -> None:
    out = io.StringIO()
    progress.use_terminal(Console(file=out, force_terminal=True, width=100))
    try:
        bar = Progress("x.img")
        bar.start(total=4 * 1024 * 1024, done=1024 * 1024)
        for _ in range(3):
            bar.advance(1024 * 1024)
        assert progress._view is not None
        shown = progress._view.bars.tasks
        assert [(t.description, t.completed, t.total) for t in shown] == [
            ("x.img", 4 * 1024 * 1024, 4 * 1024 * 1024)
        ]
        progress._view.live.refresh()
        bar.finish()
        assert progress._view.bars.tasks == []  # a finished download's bar goes
    finally:
        progress.stop()
    text = out.getvalue()
    assert "x.img" in text and "4.2/4.2 MB" in text


def test_progress_is_log_lines_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="assembler.download")
    bar = Progress("x.img")
    bar.start(total=1000, done=0)
    for _ in range(10):
        bar.advance(100)
    bar.finish()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "downloading x.img (1000 B)"
    assert any(m.startswith("x.img:  50% ") for m in messages)
    assert messages[-1].startswith("downloaded x.img: 1000 B in ")
    assert len(messages) <= 12


def test_the_loopback_guard_refuses_other_addresses() -> None:
    with socket.socket() as s, pytest.raises(AssertionError, match="tried to connect"):
        s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed, and never tried here
