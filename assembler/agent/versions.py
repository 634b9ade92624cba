"""Which trove release each guest gets, and whether a chosen one runs on the guest's Python.

Facts, checked in November 2026 against PyPI's metadata for `trove` (the JSON API and the
downloaded wheels' METADATA agree):
- 26.0.0 (newest release; 26.0.0.0rc1 too) declares Requires-Python >=3.11: the default for
  bookworm (3.11), noble (3.12) and trixie (3.13);
- 25.1.0 is the newest admitting 3.10 (24.0.0 to 25.1.0 all declare >=3.10): jammy's default.
Their wheelhouses resolve completely for those Pythons (the same pins as a resolver that
evaluates markers for the target).
glibc versions are those of each release's libc6 (bookworm 2.36, trixie 2.41, jammy 2.35,
noble 2.39); they bound the manylinux tags a wheel for that guest may carry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from assembler.distros import Release
from assembler.download import NotFoundError, fetch_small, make_session, write_atomically
from assembler.errors import DownloadError, UsageError
from assembler.paths import cache_dir

log = logging.getLogger(__name__)

AGENT_PROJECT = "trove"
# The project document (~90 KB for trove): the per-release one is not served everywhere (this
# build host's route to PyPI answers 404 for it).
PYPI_JSON = "https://pypi.org/pypi/{project}/json"


@dataclass(frozen=True)
class GuestAgentFacts:
    """What the agent's environment depends on in one guest release."""

    trove: str  # default agent release: the newest whose Requires-Python admits the guest
    glibc: str  # the release's glibc: the newest manylinux_2_X tag its wheels may target


AGENT_FACTS: dict[str, GuestAgentFacts] = {
    "jammy": GuestAgentFacts(trove="25.1.0", glibc="2.35"),
    "noble": GuestAgentFacts(trove="26.0.0", glibc="2.39"),
    "bookworm": GuestAgentFacts(trove="26.0.0", glibc="2.36"),
    "trixie": GuestAgentFacts(trove="26.0.0", glibc="2.41"),
}


def facts_for(release: Release) -> GuestAgentFacts:
    try:
        return AGENT_FACTS[release.codename]
    except KeyError:  # a release added to distros.py without its row here
        raise UsageError(f"no guest agent facts for {release.codename}") from None


def default_agent_version(release: Release) -> str:
    return facts_for(release).trove


def parse_version(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        raise UsageError(f"{version!r} is not a {AGENT_PROJECT} version (e.g. 26.0.0)") from None


def admits(requires_python: str | None, guest_python: str) -> bool:
    """Whether a Requires-Python value admits a guest's major.minor, compared as pip compares
    `--python-version X.Y` (as the version X.Y)."""
    if not requires_python:
        return True
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:  # pip ignores a malformed value too
        log.warning("ignoring malformed Requires-Python %r", requires_python)
        return True
    return spec.contains(Version(guest_python), prereleases=True)


def _cache_file(project: str) -> Path:
    return cache_dir() / "agent" / f"{project}-requires-python.json"


def _cached(project: str) -> dict[str, str | None]:
    try:
        doc = json.loads(_cache_file(project).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): str(v) if v else None for k, v in doc.items()}


def _normal(requires_python: str | None) -> str | None:
    """One spelling per value: PyPI's JSON says `>=3.11` where the wheel's METADATA says
    `>= 3.11`."""
    if not requires_python:
        return None
    try:
        return str(SpecifierSet(requires_python))
    except InvalidSpecifier:
        return requires_python


def remember_requires_python(project: str, answers: Mapping[str, str | None]) -> None:
    """Record releases' Requires-Python. A published release's metadata never changes, so the
    answers are kept for good (wheelhouse.py adds the one it reads from the agent's wheel).
    Two builds writing at once may lose one's additions: they are only fetched again."""
    path = _cache_file(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {**_cached(project), **{v: _normal(spec) for v, spec in answers.items()}}
    write_atomically(path, json.dumps(merged, indent=0, sort_keys=True).encode())


def _fetch_requires_python(project: str) -> dict[str, str | None]:
    """Requires-Python of every release, from PyPI's JSON API (well under a second; downloading
    a wheel to read its METADATA would take longer)."""
    url = PYPI_JSON.format(project=project)
    try:
        doc = json.loads(fetch_small(make_session(), url))
    except NotFoundError:
        raise UsageError(f"{project} is not published on PyPI") from None
    except DownloadError as exc:
        raise UsageError(f"cannot check {project} against the guest's Python: {exc}") from exc
    answers: dict[str, str | None] = {}
    for release, files in doc.get("releases", {}).items():
        if not files:
            continue
        # Files of one release may disagree in principle; pip reads the one it picks, which
        # for the agent is the wheel.
        files = sorted(files, key=lambda f: f.get("packagetype") != "bdist_wheel")
        answers[release] = files[0].get("requires_python") or None
    return answers


def _lookup(answers: Mapping[str, str | None], version: str) -> tuple[bool, str | None]:
    """(found, value), matching versions as versions: 26.0 is 26.0.0."""
    if version in answers:
        return True, answers[version]
    wanted = parse_version(version)
    for release, value in answers.items():
        try:
            if Version(release) == wanted:
                return True, value
        except InvalidVersion:
            continue
    return False, None


def requires_python(version: str, project: str = AGENT_PROJECT) -> str | None:
    """A release's Requires-Python, from the cache or else from PyPI (which answers for every
    release at once, all cached)."""
    found, value = _lookup(_cached(project), version)
    if found:
        return value
    answers = _fetch_requires_python(project)
    remember_requires_python(project, answers)
    found, value = _lookup(answers, version)
    if not found:
        raise UsageError(f"{project} {version} is not published on PyPI")
    return value


def check_agent_version(version: str, guest_python: str) -> None:
    """Raise UsageError when that trove release cannot run on the guest's Python.

    Meant to run before any image work: cached after the first answer, so it costs a file read.
    """
    parse_version(version)
    spec = requires_python(version)
    if not admits(spec, guest_python):
        raise UsageError(
            f"{AGENT_PROJECT} {version} requires Python {spec} but the guest has Python "
            f"{guest_python}; choose another agent version"
        )
