"""Image references (`postgres:15`, `127.0.0.1:5000/a/b@sha256:...`) with docker's rules.

Following distribution's reference grammar and docker's normalization: a first component with a
`.` or `:`, or `localhost`, is a registry host; otherwise the image is on Docker Hub
(`docker.io`), where one-component names live under `library/`. No tag and no digest means
`latest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from assembler.errors import UsageError
from assembler.oci.digest import DIGEST_GRAMMAR, digest_problem

DOCKER_HUB = "docker.io"
# Names docker treats as Docker Hub itself.
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
DEFAULT_TAG = "latest"
NAME_LIMIT = 255  # distribution's limit on registry + repository

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(DIGEST_GRAMMAR)


def _malformed(text: str, why: str) -> UsageError:
    return UsageError(f"malformed image reference {text!r}: {why}")


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port] as written (docker.io for Docker Hub)
    repository: str  # path on that registry, e.g. library/postgres
    tag: str | None = None
    digest: str | None = None  # when set, what is fetched; the tag is then only a label

    @classmethod
    def parse(cls, text: str) -> Reference:
        if not text or text != text.strip():
            raise _malformed(text, "empty or surrounded by spaces")
        rest, digest = text, None
        if "@" in rest:
            rest, _, digest = rest.partition("@")
            if not _DIGEST.fullmatch(digest):
                raise _malformed(text, f"{digest!r} is not a digest")
            if problem := digest_problem(digest):
                raise _malformed(text, problem)
        tag = None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:  # a colon after the last slash is a tag; before it, a port
            rest, _, tag = rest.rpartition(":")
            if not _TAG.fullmatch(tag):
                raise _malformed(text, f"{tag!r} is not a valid tag")
        registry, path = _split_registry(rest, text)
        components = path.split("/")
        for component in components:
            if not _PATH_COMPONENT.fullmatch(component):
                why = (
                    "repository names must be lowercase"
                    if component.lower() != component
                    else f"{component!r} is not a valid repository component"
                )
                raise _malformed(text, why)
        if registry == DOCKER_HUB and len(components) == 1:
            path = f"library/{path}"
        if len(registry) + 1 + len(path) > NAME_LIMIT:
            raise _malformed(text, f"name longer than {NAME_LIMIT} characters")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the registry's /manifests/<reference> is asked for: the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar(self) -> str:
        """The short form docker shows (and writes in RepoTags): `postgres:15` for Hub images."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = self.repository.removeprefix("library/")
        return name + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        return Reference.parse(f"{self.name}:{tag}")

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _split_registry(rest: str, text: str) -> tuple[str, str]:
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            raise _malformed(text, f"{first!r} is not a registry host")
        registry = DOCKER_HUB if first.lower() in _HUB_ALIASES else first
        return registry, path
    if not rest:
        raise _malformed(text, "no repository name")
    return DOCKER_HUB, rest
