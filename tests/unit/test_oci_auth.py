"""WWW-Authenticate parsing, and the Bearer token dance against a small registry on loopback."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from assembler.oci import media
from assembler.oci.challenge import Challenge, parse_challenges, pick
from assembler.oci.credentials import Credentials
from assembler.oci.digest import sha256_of
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient, RegistryError


def test_parse_bearer() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/postgres:pull"'
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/postgres:pull",
            },
        )
    ]


def test_parse_several_and_escapes() -> None:
    header = (
        'Basic realm="a \\"quoted\\" realm", Bearer realm="http://x/t", error=insufficient_scope'
    )
    found = parse_challenges(header)
    assert [c.scheme for c in found] == ["basic", "bearer"]
    assert found[0].realm == 'a "quoted" realm'
    assert found[1].params["error"] == "insufficient_scope"
    assert pick(header) == found[1]
    assert pick('Basic realm="r"') == Challenge("basic", {"realm": "r"})
    assert pick("") is None


MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'


class Fake(BaseHTTPRequestHandler):
    """A registry that wants a Bearer token from its own /token, given for alice:secret."""

    tokens_given: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/token":
            auth = self.headers.get("Authorization", "")
            if auth != "Basic " + base64.b64encode(b"alice:secret").decode():
                self.send_response(401)
                self.end_headers()
                return
            scope = parse_qs(url.query)["scope"][0]
            self.tokens_given.append(scope)
            self._send(200, b'{"token": "tok-%s"}' % scope.encode(), "application/json")
            return
        if self.headers.get("Authorization") not in ("Bearer tok-repository:a/b:pull",):
            realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="fake"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/v2/a/b/manifests/1":
            self._send(200, MANIFEST, media.OCI_MANIFEST)
        else:
            self._send(404, b"{}", "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Fake.tokens_given = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bearer_token_fetched_with_the_login_and_reused(fake: str) -> None:
    with RegistryClient(fake, credentials=Credentials("alice", "secret")) as client:
        for _ in range(2):
            got = client.manifest(Reference.parse(f"{fake}/a/b:1"))
            assert got.digest == sha256_of(MANIFEST)
    assert Fake.tokens_given == ["repository:a/b:pull"]  # once, then the cached token


def test_bearer_refused_login(fake: str) -> None:
    with (
        RegistryClient(fake, credentials=Credentials("alice", "nope")) as client,
        pytest.raises(RegistryError) as err,
    ):
        client.manifest(Reference.parse(f"{fake}/a/b:1"))
    assert str(err.value) == f"registry {fake} refused the login of alice"


def test_not_a_registry() -> None:
    # A plain web server: /v2/ is not found, and there is no registry header.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        with RegistryClient(host) as client, pytest.raises(RegistryError) as err:
            client.manifest(Reference.parse(f"{host}/a/b:1"))
    finally:
        server.shutdown()
        server.server_close()
    assert str(err.value).startswith(f"{host} is not a container registry (GET /v2/ answered 501")


def test_insecure_defaults() -> None:
    assert RegistryClient("127.0.0.5:5000").base_url == "http://127.0.0.5:5000"
    assert RegistryClient("localhost:5000").base_url == "http://localhost:5000"
    assert RegistryClient("[::1]:5000").base_url == "http://[::1]:5000"
    assert RegistryClient("reg.example:5000").base_url == "https://reg.example:5000"
    assert RegistryClient("169.254.0.102:5000").base_url == "https://169.254.0.102:5000"
    assert RegistryClient("reg.example", insecure=True).base_url == "http://reg.example"
    assert RegistryClient("docker.io").base_url == "https://registry-1.docker.io"
