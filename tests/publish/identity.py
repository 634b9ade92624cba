"""What Keystone's auth_token middleware would tell Glance, for a Glance run without Keystone.

Referenced from the test Glance's paste pipeline in front of Glance's own `context` filter,
which builds the request context from these headers (as in Glance's functional tests), so the
default policies apply as in production and images get a real owner.

It can also play a Glance that refuses: while the file named by `refuse_file` exists, every
write answers 403. A file, not a variable, because the switch must reach the running uWSGI
worker from the test process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Keystone's middleware drops whatever identity the client claims before it adds its own.
CLAIMS = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_PROJECT_ID", "HTTP_X_TENANT_ID",
          "HTTP_X_USER_ID", "HTTP_X_ROLES", "HTTP_X_ROLE", "HTTP_X_SERVICE_CATALOG")  # fmt: skip


class IdentityHeaders:
    def __init__(
        self, app: App, project_id: str, user_id: str, roles: str, refuse_file: str
    ) -> None:
        self.app = app
        self.headers = {
            "HTTP_X_IDENTITY_STATUS": "Confirmed",
            "HTTP_X_PROJECT_ID": project_id,
            "HTTP_X_USER_ID": user_id,
            "HTTP_X_ROLES": roles,
        }
        self.refuse_file = refuse_file

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in WRITES and os.path.exists(self.refuse_file):
            body = b"403 Forbidden\n\nrefused by the test's switch (tests/publish/identity.py)\n"
            start_response(
                "403 Forbidden",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            )
            return [body]
        for key in CLAIMS:
            environ.pop(key, None)
        environ.update(self.headers)
        return self.app(environ, start_response)


def filter_factory(global_conf: dict[str, str], **local_conf: str) -> Callable[[App], App]:
    """Paste's filter factory: the identity comes from the filter's section of the paste ini."""

    def make(app: App) -> App:
        return IdentityHeaders(
            app,
            project_id=local_conf["project_id"],
            user_id=local_conf["user_id"],
            roles=local_conf.get("roles", "admin,member,reader"),
            refuse_file=local_conf["refuse_file"],
        )

    return make
