"""A client of the OCI distribution API v2 (what docker pull and push speak), over requests.

Plain http only for registries that are insecure (by default those on loopback, as dockerd
decides). Logins: anonymous, HTTP Basic, or a Bearer token fetched from the realm a 401 names.
Nothing fetched is trusted before its digest is checked. Every failure is one RegistryError
line; neither passwords nor tokens ever reach a message or a log line (requests are logged as
method and URL only).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from assembler import __version__
from assembler.errors import AssemblerError, UsageError
from assembler.oci import media
from assembler.oci.challenge import Challenge, pick
from assembler.oci.credentials import Credentials
from assembler.oci.digest import CHUNK, digest_of, digest_problem, hasher, is_digest
from assembler.oci.image import platform_entry
from assembler.oci.reference import DOCKER_HUB, Reference

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # seconds to connect, and between two reads of a body
MANIFEST_LIMIT = 4 * 1024 * 1024  # distribution refuses larger manifests; so do we
DEFAULT_PLATFORM = ("linux", "amd64")
_HUB_API = "registry-1.docker.io"  # docker.io names the registry, this host serves its API


class RegistryError(AssemblerError):
    """A registry could not be reached, refused us, lacks something, or sent bad content."""


class NotFound(RegistryError):
    """The registry has no such manifest or blob (it answered 404)."""


class FetchedManifest(NamedTuple):
    media_type: str
    body: bytes  # exactly as sent: its digest is the manifest's identity
    digest: str


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    name = urlsplit(f"//{host}").hostname or host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class _Body:
    """A request body of known length that requests streams without reading it all at once
    (it takes the length from __len__ and reads in chunks)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._left, self._size = f, size, size

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


class RegistryClient:
    """One registry host; holds its session and the tokens it was given, per scope."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool | None = None,
        credentials: Credentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.insecure = is_loopback(host) if insecure is None else insecure
        self.credentials = credentials
        self.timeout = timeout
        api_host = _HUB_API if host == DOCKER_HUB else host
        self.base_url = f"{'http' if self.insecure else 'https'}://{api_host}"
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"trove-image-assembler/{__version__}"
        # A proxy from the environment must not carry loopback traffic (or a netrc its logins).
        self._session.trust_env = not is_loopback(host)
        self._tokens: dict[str, str] = {}
        self._basic = False  # the registry asked for Basic: send the login with every request
        self._pinged = False

    def __repr__(self) -> str:
        user = self.credentials.username if self.credentials else None
        return f"RegistryClient({self.base_url!r}, user={user!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the host is a registry (GET /v2/); learn whether it wants Basic."""
        if self._pinged:
            return
        url = f"{self.base_url}/v2/"
        response = self._raw("GET", url, {})
        with response:
            status = response.status_code
            challenge = pick(response.headers.get("WWW-Authenticate", ""))
            api = response.headers.get("Docker-Distribution-Api-Version", "")
            json_body = "json" in response.headers.get("Content-Type", "")
        if not (status == 200 and (api or json_body)) and not (status == 401 and challenge):
            raise RegistryError(
                f"{self.host} is not a container registry "
                f"(GET /v2/ answered {status} {response.reason})"
            )
        if challenge is not None and challenge.scheme == "basic" and self.credentials:
            self._basic = True
        self._pinged = True

    def manifest(
        self, ref: Reference, platform: tuple[str, str] = DEFAULT_PLATFORM
    ) -> FetchedManifest:
        """The image manifest ref names; from an index, the entry for `platform` (os, arch)."""
        self.check_host(ref)
        fetched = self.raw_manifest(ref.repository, ref.reference)
        if fetched.media_type in media.INDEXES:
            entry = choose_platform(fetched.body, platform, f"{self.host}/{ref.repository}")
            fetched = self.raw_manifest(ref.repository, entry)
        if fetched.media_type not in media.MANIFESTS:
            raise RegistryError(
                f"{self.host}/{ref.repository}@{fetched.digest} is a {fetched.media_type}, "
                "not an image manifest this tool reads"
            )
        return fetched

    def raw_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """One manifest or index as the registry has it, digest checked."""
        shown = _shown(repository, reference)
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self._send(
            "GET", url, pull_scope(repository), {"Accept": media.ACCEPT}, stream=True
        )
        with response:
            if response.status_code == 404:
                raise NotFound(f"{self.host} has no {shown}")
            self._expect(response, 200, f"fetching {shown}")
            body = self._read_limited(response, MANIFEST_LIMIT + 1, shown)
            header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = response.headers.get("Docker-Content-Digest", "")
        if len(body) > MANIFEST_LIMIT:
            raise RegistryError(f"{self.host} sent a manifest over 4 MiB for {shown}")
        media_type = header_type if header_type in media.INDEXES | media.MANIFESTS else ""
        media_type = media_type or _declared_type(body) or header_type
        # By digest, the reference is the check; by tag, the registry's own header (if any).
        expected = reference if is_digest(reference) else header_digest
        got = digest_of(body, expected if expected and is_digest(expected) else "sha256:")
        if expected and is_digest(expected) and got != expected:
            raise RegistryError(f"digest mismatch for {shown} from {self.host}: got {got}")
        return FetchedManifest(media_type, body, got)

    def find_manifest(self, repository: str, reference: str) -> FetchedManifest | None:
        """raw_manifest, or None when the registry has none under that reference."""
        try:
            return self.raw_manifest(repository, reference)
        except NotFound:
            return None

    def blob(self, repository: str, digest: str, dest: Path, size: int | None = None) -> None:
        """Stream a blob to dest, checking digest (and size) as it comes; nothing is left
        behind at dest unless it matched."""
        shown = f"{repository}@{digest}"
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            response = self._send("GET", url, pull_scope(repository), stream=True)
            with response:
                if response.status_code == 404:
                    raise NotFound(f"{self.host} has no blob {shown}")
                self._expect(response, 200, f"fetching blob {shown}")
                h, count = hasher(digest), 0
                with tmp.open("wb") as f, self._broken_body(shown):
                    for chunk in response.iter_content(CHUNK):
                        h.update(chunk)
                        f.write(chunk)
                        count += len(chunk)
                        if size is not None and count > size:
                            break
            got = f"{digest.partition(':')[0]}:{h.hexdigest()}"
            if got != digest or (size is not None and count != size):
                raise RegistryError(
                    f"digest mismatch for {shown} from {self.host}: got {got} ({count} bytes)"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def has_blob(self, repository: str, digest: str, scope: str | None = None) -> bool:
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        response = self._send("HEAD", url, scope or pull_scope(repository))
        with response:
            if response.status_code == 404:
                return False
            self._expect(response, 200, f"checking blob {repository}@{digest}")
        return True

    # --- writing ---------------------------------------------------------------------------

    def push_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        opener: Callable[[], contextlib.AbstractContextManager[BinaryIO]],
        mount_from: str | None = None,
    ) -> bool:
        """Upload a blob unless the registry has it (or mounts it from another repository).

        `opener` opens the content afresh (a login retry resends it). True when uploaded.
        """
        scope = push_scope(repository)
        if self.has_blob(repository, digest, scope):
            log.debug("%s already has %s", self.host, digest)
            return False
        url = f"{self.base_url}/v2/{repository}/blobs/uploads/"
        if mount_from:
            url += "?" + urlencode({"mount": digest, "from": mount_from})
        response = self._send("POST", url, scope)
        with response:
            if response.status_code == 201 and mount_from:
                return False  # mounted: the registry had it in mount_from
            self._expect(response, 202, f"starting the upload of {digest} to {repository}")
            location = response.headers.get("Location", "")
        if not location:
            raise RegistryError(f"{self.host} started an upload without saying where (Location)")
        put_url = _with_query(urljoin(url, location), digest=digest)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        response = self._send("PUT", put_url, scope, headers, body=(opener, size))
        with response:
            self._expect(response, 201, f"uploading {digest} to {repository}")
        return True

    def push_manifest(self, repository: str, reference: str, media_type: str, body: bytes) -> str:
        """PUT a manifest under a tag (or its digest); returns its digest."""
        digest = digest_of(body, reference if is_digest(reference) else "sha256:")
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self._send(
            "PUT", url, push_scope(repository), {"Content-Type": media_type}, data=body
        )
        with response:
            self._expect(response, 201, f"pushing the manifest {_shown(repository, reference)}")
            stated = response.headers.get("Docker-Content-Digest", "")
        if stated and stated != digest:
            raise RegistryError(f"{self.host} stored the manifest as {stated}, not {digest}")
        return digest

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """DELETE a manifest by digest (its tags go with it); False if it was already gone."""
        url = f"{self.base_url}/v2/{repository}/manifests/{digest}"
        response = self._send("DELETE", url, push_scope(repository).replace("push", "delete"))
        with response:
            if response.status_code == 404:
                return False
            self._expect(response, 202, f"deleting {repository}@{digest}")
        return True

    def tags(self, repository: str) -> list[str]:
        """Every tag of the repository (the tags list API, followed page by page)."""
        url: str | None = f"{self.base_url}/v2/{repository}/tags/list?n=1000"
        found: list[str] = []
        while url:
            response = self._send("GET", url, pull_scope(repository))
            with response:
                if response.status_code == 404:
                    return found  # a repository nothing was pushed to yet
                self._expect(response, 200, f"listing the tags of {repository}")
                try:
                    found += response.json().get("tags") or []
                except (ValueError, AttributeError):
                    raise RegistryError(f"{self.host} sent a malformed tag list") from None
                following = response.links.get("next", {}).get("url")
            url = urljoin(url, following) if following else None
        return found

    # --- the protocol ----------------------------------------------------------------------

    def check_host(self, ref: Reference) -> None:
        if ref.registry != self.host:
            raise UsageError(f"{ref} is not on registry {self.host}")

    def _send(
        self,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str] | None = None,
        *,
        data: bytes | None = None,
        body: tuple[Callable[[], contextlib.AbstractContextManager[BinaryIO]], int] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request with the login it needs; a 401 is answered once, then is final."""
        self.ping()
        for attempt in range(2):
            sent = dict(headers or {})
            if auth := self._authorization(scope):
                sent["Authorization"] = auth
            if body is None:
                response = self._raw(method, url, sent, data=data, stream=stream)
            else:
                opener, size = body
                with opener() as f:
                    response = self._raw(method, url, sent, data=_Body(f, size), stream=stream)
            if response.status_code != 401:
                return response
            challenge = pick(response.headers.get("WWW-Authenticate", ""))
            response.close()
            if attempt == 1:
                break
            self._answer(challenge, scope)
        raise self._refused(scope)

    def _authorization(self, scope: str) -> str | None:
        if scope in self._tokens:
            return f"Bearer {self._tokens[scope]}"
        if self._basic and self.credentials:
            pair = f"{self.credentials.username}:{self.credentials.password}"
            return "Basic " + base64.b64encode(pair.encode()).decode()
        return None

    def _answer(self, challenge: Challenge | None, scope: str) -> None:
        if challenge is None:
            raise RegistryError(f"registry {self.host} answered 401 without saying how to log in")
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise self._refused(scope)
            self._basic = True
        else:
            self._tokens[scope] = self._token(challenge, scope)

    def _token(self, challenge: Challenge, scope: str) -> str:
        """A Bearer token from the challenge's realm, asked for with our login if we have one."""
        realm = challenge.realm or ""
        realm_host = urlsplit(realm).netloc
        if urlsplit(realm).scheme not in ("http", "https") or not realm_host:
            raise RegistryError(f"registry {self.host} named no usable token service")
        params = [("scope", scope)]
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        if (extra := challenge.params.get("scope")) and extra != scope:
            params.append(("scope", extra))
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        log.debug("GET %s (token for %s)", realm, scope)
        try:
            response = self._session.get(realm, params=params, auth=auth, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RegistryError(
                f"registry {self.host} unreachable: its token service {realm_host}: {_reason(exc)}"
            ) from exc
        with response:
            if response.status_code in (401, 403):
                raise self._refused(scope)
            if response.status_code != 200:
                raise RegistryError(
                    f"token service {realm_host} of {self.host} answered "
                    f"{response.status_code} {response.reason}"
                )
            try:
                answer = response.json()
            except ValueError:
                answer = None
        token = None
        if isinstance(answer, dict):
            token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {realm_host} of {self.host} sent no token")
        return token

    def _refused(self, scope: str) -> RegistryError:
        if self.credentials is not None:
            return RegistryError(
                f"registry {self.host} refused the login of {self.credentials.username}"
            )
        repository = scope.split(":")[1] if scope.count(":") >= 2 else scope
        return RegistryError(
            f"registry {self.host} requires a login for {repository} "
            "(none found in docker's config.json)"
        )

    def _raw(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        data: bytes | _Body | None = None,
        stream: bool = False,
    ) -> requests.Response:
        log.debug("%s %s", method, url)  # never the headers: they carry the login
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                stream=stream,
                timeout=self.timeout,
                allow_redirects=True,
            )
        except requests.exceptions.SSLError as exc:
            hint = "; a plain-http registry must be marked insecure" if not self.insecure else ""
            raise RegistryError(
                f"registry {self.host} unreachable: TLS failed ({_reason(exc)}){hint}"
            ) from exc
        except requests.RequestException as exc:
            raise RegistryError(f"registry {self.host} unreachable: {_reason(exc)}") from exc

    def _expect(self, response: requests.Response, status: int, doing: str) -> None:
        if response.status_code == status:
            return
        raise RegistryError(
            f"registry {self.host} answered {response.status_code} {response.reason} "
            f"{doing}{_error_detail(response)}"
        )

    def _read_limited(self, response: requests.Response, limit: int, shown: str) -> bytes:
        data = bytearray()
        with self._broken_body(shown):
            for chunk in response.iter_content(CHUNK):
                data += chunk
                if len(data) >= limit:
                    break
        return bytes(data)

    @contextlib.contextmanager
    def _broken_body(self, shown: str) -> Iterator[None]:
        try:
            yield
        except requests.RequestException as exc:
            raise RegistryError(
                f"registry {self.host} unreachable: the connection broke off sending {shown} "
                f"({_reason(exc)})"
            ) from exc


def choose_platform(index_body: bytes, platform: tuple[str, str], where: str) -> str:
    """The digest of the index entry for platform (os, architecture)."""
    try:
        entries = json.loads(index_body)["manifests"]
        if not isinstance(entries, list):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{where}: a malformed image index") from exc
    entry = platform_entry(entries, platform)
    digest = entry.get("digest") if isinstance(entry, dict) else None
    if isinstance(digest, str) and not digest_problem(digest):
        return digest
    have = sorted(
        {
            f"{p.get('os')}/{p.get('architecture')}"
            for e in entries
            if isinstance(e, dict) and isinstance(p := e.get("platform"), dict)
        }
    )
    raise RegistryError(
        f"{where} has no {platform[0]}/{platform[1]} image (has {', '.join(have) or 'nothing'})"
    )


def _shown(repository: str, reference: str) -> str:
    return f"{repository}@{reference}" if is_digest(reference) else f"{repository}:{reference}"


def _declared_type(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _error_detail(response: requests.Response) -> str:
    """`: CODE message` from a distribution error body, when there is one."""
    try:
        first = response.json()["errors"][0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error: `connection refused`, `timed out`..."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = seen.__cause__ or seen.__context__
            if inner is None and seen.args and isinstance(seen.args[0], BaseException):
                inner = seen.args[0]
        seen = inner
    if isinstance(exc, requests.Timeout):
        return "timed out"
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
