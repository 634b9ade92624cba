"""WWW-Authenticate challenges (RFC 7235), as registries send them on a 401.

`Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"` says
where to get a token; `Basic realm="..."` asks for the login on every request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*(,|$)")
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercased: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)  # names lowercased

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a WWW-Authenticate value; malformed trailing parts are dropped."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        while pos < len(header) and header[pos] in ", ":
            pos += 1
        m = _SCHEME.match(header, pos)
        if not m:
            break
        scheme, pos = m[1].lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            p = _PARAM.match(header, pos)
            if not p:
                break
            value = re.sub(r"\\(.)", r"\1", p[2]) if p[2] is not None else p[3]
            params[p[1].lower()] = value
            pos = p.end()
        challenges.append(Challenge(scheme, params))
    return challenges


def pick(header: str) -> Challenge | None:
    """The challenge to answer: Bearer when offered (what registries prefer), else Basic."""
    found = parse_challenges(header)
    for scheme in ("bearer", "basic"):
        for challenge in found:
            if challenge.scheme == scheme:
                return challenge
    return None
