"""An OpenStack-compatible metadata service on 127.0.0.1, as Nova's would answer a guest.

QEMU maps it into the guest at 169.254.169.254:80 (a guestfwd per connection); the guest can
reach nothing else. Every request is recorded so a report can show what the guest asked for.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from assembler.boottest.instance import EC2_VERSIONS, Instance, openstack_tree

log = logging.getLogger(__name__)


def _listing(paths: list[str], prefix: str) -> bytes | None:
    """A directory listing as the metadata API gives it: one child per line, dirs with '/'."""
    children: list[str] = []
    for p in paths:
        if p.startswith(prefix) and p != prefix:
            rest = p[len(prefix) :]
            child = rest.split("/", 1)[0] + ("/" if "/" in rest else "")
            if child not in children:
                children.append(child)
    return "\n".join(children).encode() if children else None


class MetadataService:
    def __init__(self, inst: Instance) -> None:
        self.tree: dict[str, bytes] = {f"openstack/{k}": v for k, v in openstack_tree(inst).items()}
        for version in EC2_VERSIONS:
            for key, value in inst.ec2_meta_data().items():
                self.tree[f"{version}/meta-data/{key}"] = value.encode()
            self.tree[f"{version}/user-data"] = inst.user_data().encode()
        self.requests: list[tuple[str, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def lookup(self, path: str) -> bytes | None:
        key = path.split("?", 1)[0].strip("/")
        if key in self.tree:
            return self.tree[key]
        listing = _listing(sorted(self.tree), key + "/" if key else "")
        if key == "openstack" and listing is not None:
            # Nova lists its API versions bare; cloud-init compares them as they come.
            listing = listing.replace(b"/", b"")
        return listing

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = service.lookup(self.path)
                status = 200 if body is not None else 404
                service.requests.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                payload = body if body is not None else b"Not Found"
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metadata: " + format, *args)

        return Handler

    def __enter__(self) -> MetadataService:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
