"""The guest agent's wheelhouse: every wheel it needs, for the guest's Python, fetched on the host.

pip inside the guest or the appliance can never reach an index, and Python under emulation is
slow, so all packaging work happens here. uv resolves the agent's requirements for the guest
(`uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_36 --only-binary
:all:`), environment markers evaluated for that Python and platform; pip would evaluate them for
the Python it runs on (pypa/pip#6117, #11010). Its lock (PEP 751 pylock.toml) lists, for each
pinned version, the wheels that fit the guest with their URLs and sha256. The one pip would
install (the guest's most specific tag) is fetched, several at a time, and kept only when its
sha256 is the one the index published.

A dependency published only as an sdist is built into a wheel here, and accepted only when it
comes out pure Python (py3-none-any): a compiled one would be for the host's Python. uv is then
asked again with that wheel among its --find-links. pip only builds wheels here (that, and the
agent from a local source).

uv reads its own configuration, not pip's: a mirror is UV_DEFAULT_INDEX (or uv.toml), a proxy
HTTPS_PROXY, a private CA SSL_CERT_FILE. The wheels are fetched as the base image is (requests:
HTTPS_PROXY, REQUESTS_CA_BUNDLE).

The result is cached under cache_dir()/wheelhouses/<key>, the key a hash of every input: agent
version (or the source's content hash), constraints content, guest Python, glibc and arch.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
from packaging import tags
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

from assembler import cancel, leftovers
from assembler.agent import versions
from assembler.distros import Release
from assembler.download import (
    Progress,
    download,
    fetch_small,
    hash_file,
    host_of,
    locked,
    make_session,
    part_path,
)
from assembler.errors import AssemblerError, BuildError, CommandError, DownloadError, UsageError
from assembler.paths import cache_dir
from assembler.run import run
from assembler.sources import HashAlgo

log = logging.getLogger(__name__)

STEP = "agent-wheelhouse"
# Bumped when the layout or the way a wheelhouse is made changes, so old entries are not reused.
FORMAT = 1
INDEX_FILE = "wheelhouse.json"
# Wheels fetched at once: most of the ~130 are under 1 MiB, so each costs its round trips more
# than its bytes; the index's CDN serves that many in parallel without complaint.
FETCH_WORKERS = 8

# PEP 513/571/599 names of manylinux_2_{5,12,17}; pip does not derive them from PEP 600 names.
LEGACY_MANYLINUX: tuple[tuple[str, int], ...] = (
    ("manylinux2014", 17),
    ("manylinux2010", 12),
    ("manylinux1", 5),
)
OLDEST_MANYLINUX_GLIBC_MINOR = 5

# Files of a source tree that do not change what it builds: VCS data, build outputs, and the
# AUTHORS/ChangeLog/egg-info that pbr writes into the tree while building it.
_TREE_SKIP_TOP = frozenset(
    {".git", ".tox", ".eggs", ".venv", ".stestr", "build", "dist", "AUTHORS", "ChangeLog"}
)
_TREE_SKIP_ANY = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


# ----- the spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PypiAgent:
    """A released trove, by version."""

    version: str

    def describe(self) -> str:
        return f"PyPI {versions.AGENT_PROJECT}=={self.version}"


@dataclass(frozen=True)
class LocalAgent:
    """A trove checkout or sdist on the host (`--agent-source PATH`)."""

    path: Path

    def describe(self) -> str:
        return str(self.path)


AgentSource = PypiAgent | LocalAgent


def parse_agent_source(text: str) -> AgentSource:
    """`trove==26.0.0`, `26.0.0`, or a path to a trove checkout or sdist."""
    name, sep, version = text.partition("==")
    if sep and canonicalize_name(name) == versions.AGENT_PROJECT:
        versions.parse_version(version)
        return PypiAgent(version)
    path = Path(text).expanduser()
    if path.exists():
        return LocalAgent(path.resolve())
    if "/" not in text:
        versions.parse_version(text)
        return PypiAgent(text)
    raise UsageError(f"agent source {text} does not exist")


def check_agent_source(agent: AgentSource, guest_python: str) -> None:
    """The checks to run before any image work (a file read once PyPI's answer is cached): a
    released agent admits the guest's Python, a local source exists. A local source's own
    Requires-Python is read when its wheel is built."""
    if isinstance(agent, PypiAgent):
        versions.check_agent_version(agent.version, guest_python)
    elif not agent.path.exists():
        raise UsageError(f"agent source {agent.path} does not exist")


@dataclass(frozen=True)
class WheelhouseSpec:
    agent: AgentSource
    python: str  # the guest's major.minor
    glibc: str  # the guest's glibc major.minor
    constraints: str | None = None  # a file or an http(s) URL (upper-constraints)
    arch: str = "x86_64"
    # Installed beside the agent, as `python3 -m venv` would: dev mode pip-installs missing
    # requirements into the venv from the baked wheelhouse, and operators expect venv/bin/pip.
    tools: tuple[str, ...] = ("pip",)

    @classmethod
    def for_release(
        cls,
        release: Release,
        agent: AgentSource | None = None,
        constraints: str | None = None,
    ) -> WheelhouseSpec:
        facts = versions.facts_for(release)
        return cls(
            agent=agent or PypiAgent(facts.trove),
            python=release.python,
            glibc=facts.glibc,
            constraints=constraints,
        )

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


def _glibc_minor(glibc: str) -> int:
    major, _, minor_text = glibc.partition(".")
    if major != "2" or not minor_text.isdigit():
        raise UsageError(f"glibc {glibc} is not a 2.X version")
    return int(minor_text)


def manylinux_platforms(glibc: str, arch: str) -> tuple[str, ...]:
    """Every manylinux tag a guest with this glibc runs, newest first (pip prefers earlier)."""
    minor = _glibc_minor(glibc)
    names = [f"manylinux_2_{m}_{arch}" for m in range(minor, OLDEST_MANYLINUX_GLIBC_MINOR - 1, -1)]
    names += [f"{alias}_{arch}" for alias, m in LEGACY_MANYLINUX if m <= minor]
    return tuple(names)


# The newest manylinux uv (0.13) accepts for --python-platform; trixie's glibc is 2.41. Asking
# for an older one only hides wheels that need the newer glibc: the resolution stays valid.
UV_NEWEST_MANYLINUX_MINOR = 40


def uv_platform(glibc: str, arch: str) -> str:
    """uv's --python-platform for the guest: its newest manylinux (as far as uv names them),
    which admits the older ones."""
    return f"{arch}-manylinux_2_{min(_glibc_minor(glibc), UV_NEWEST_MANYLINUX_MINOR)}"


def supported_tags(spec: WheelhouseSpec) -> list[tags.Tag]:
    """The tags a wheel for the guest may carry, most specific first: the order pip ranks them
    in for `--python-version --implementation cp --abi --platform`, as packaging derives it."""
    major, _, minor = spec.python.partition(".")
    version = (int(major), int(minor))
    platforms = list(manylinux_platforms(spec.glibc, spec.arch))
    return [
        *tags.cpython_tags(version, [spec.abi], platforms),
        *tags.compatible_tags(version, spec.abi, platforms),
    ]


def target_environment(python: str, arch: str) -> dict[str, str]:
    """PEP 508 marker values of the guest. The guest's patch level is not known here; X.Y.0
    decides every marker on major.minor, which is what dependencies mark on in practice."""
    env = {k: str(v) for k, v in default_environment().items()}  # keys added by later PEPs
    full = f"{python}.0"
    env.update(
        implementation_name="cpython",
        implementation_version=full,
        os_name="posix",
        platform_machine=arch,
        platform_python_implementation="CPython",
        platform_release="",
        platform_system="Linux",
        platform_version="",
        python_full_version=full,
        python_version=python,
        sys_platform="linux",
    )
    return env


def _applies(req: Requirement, env: Mapping[str, str]) -> bool:
    return req.marker is None or req.marker.evaluate({**env, "extra": ""})


def _unmarked(req: Requirement) -> str:
    bare = Requirement(str(req))
    bare.marker = None
    return str(bare)


# A comment is `#` at the start of a line or after whitespace, as in pip's requirement files.
_COMMENT = re.compile(r"(^|\s+)#.*$")


def constraints_for_target(text: str, env: Mapping[str, str]) -> str:
    """The constraints that apply to the guest, markers evaluated for it and removed (pip would
    evaluate them for the host: upper-constraints pins per Python version)."""
    out = []
    for line in text.splitlines():
        body = _COMMENT.sub("", line).strip()
        if not body:
            continue
        if body.startswith("-"):  # an option line (-c other.txt ...): pip's business
            out.append(body)
            continue
        try:
            req = Requirement(body)
        except InvalidRequirement:
            out.append(body)
            continue
        if _applies(req, env):
            out.append(_unmarked(req))
    return "\n".join(out) + "\n"


# ----- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical project name
    version: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Wheelhouse:
    directory: Path
    key: str
    agent_name: str
    agent_version: str
    agent_source: str  # "PyPI trove==26.0.0" or the local path
    python: str
    glibc: str
    arch: str
    constraints: str | None  # where they came from
    constraints_sha256: str | None
    wheels: tuple[Wheel, ...]

    @property
    def agent_wheel(self) -> Wheel:
        return next(w for w in self.wheels if w.name == canonicalize_name(self.agent_name))

    def requirements(self) -> tuple[Wheel, ...]:
        """Every wheel but the agent's own (dev mode brings trove's source itself)."""
        agent = self.agent_wheel
        return tuple(w for w in self.wheels if w != agent)

    @property
    def size(self) -> int:
        return sum(w.size for w in self.wheels)

    def manifest(self) -> dict[str, Any]:
        """For the build manifest: agent version and source, and every wheel's hash."""
        return {
            "name": self.agent_name,
            "version": self.agent_version,
            "source": self.agent_source,
            "python": self.python,
            "platform": f"manylinux_{self.glibc.replace('.', '_')}_{self.arch}",
            "constraints": self.constraints,
            "constraints_sha256": self.constraints_sha256,
            "wheelhouse": self.key,
            "wheels": {w.path.name: w.sha256 for w in self.wheels},
        }


# ----- building -----------------------------------------------------------------------------


def build_wheelhouse(spec: WheelhouseSpec) -> Wheelhouse:
    """The wheelhouse for `spec`, from the cache or built (under a lock, published atomically)."""
    constraints_text = _read_constraints(spec.constraints) if spec.constraints else None
    constraints_sha = (
        hashlib.sha256(constraints_text.encode()).hexdigest() if constraints_text else None
    )
    agent_token = _agent_token(spec.agent)
    key = cache_key(spec, agent_token, constraints_sha)
    root = cache_dir() / "wheelhouses"
    entry = root / key
    with locked(root / f"{key}.lock", f"the agent wheelhouse {key}"):
        cached = _load(entry, spec, constraints_sha)
        if cached is not None:
            log.info("agent wheelhouse %s from the cache (%d wheels)", key, len(cached.wheels))
            return cached
        for stale in root.glob(f".{key}.*.partial"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = leftovers.partial(entry)
        try:
            started = time.monotonic()
            out = work / "wheels"
            out.mkdir(parents=True)
            agent = _download_all(spec, constraints_text, work, out)
            _write_index(out, spec, agent, constraints_sha)
            if entry.exists():  # unreadable or altered: rebuilt, replaced
                shutil.rmtree(entry)
            os.rename(out, entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        house = _load(entry, spec, constraints_sha)
        assert house is not None
        log.info(
            "agent wheelhouse for CPython %s: %d wheels, %.1f MiB in %.1f s",
            spec.python,
            len(house.wheels),
            house.size / 2**20,
            time.monotonic() - started,
        )
        return house


def cache_key(spec: WheelhouseSpec, agent_token: str, constraints_sha: str | None) -> str:
    doc = {
        "format": FORMAT,
        "agent": agent_token,
        "python": spec.python,
        "glibc": spec.glibc,
        "arch": spec.arch,
        "constraints": constraints_sha,
        "tools": list(spec.tools),
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
    label = f"trove-{spec.agent.version}" if isinstance(spec.agent, PypiAgent) else "trove-local"
    return f"{label}-{spec.abi}-{spec.arch}-{digest}"


def _agent_token(agent: AgentSource) -> str:
    """What identifies the agent's code: its version, or the hash of the source's content."""
    if isinstance(agent, PypiAgent):
        return f"pypi:{versions.AGENT_PROJECT}=={agent.version}"
    if agent.path.is_file():
        return f"sdist:{hash_file(agent.path, HashAlgo.SHA256)}"
    if agent.path.is_dir():
        return f"tree:{tree_hash(agent.path)}"
    raise UsageError(f"agent source {agent.path} does not exist")


def tree_hash(path: Path) -> str:
    """sha256 over a source tree's file names and contents (and its git HEAD: pbr makes the
    version from it), leaving out what building the tree writes into it."""
    digest = hashlib.sha256()
    for file in sorted(_tree_files(path)):
        rel = file.relative_to(path).as_posix()
        digest.update(rel.encode() + b"\0")
        if file.is_symlink():
            digest.update(b"link:" + os.readlink(file).encode())
        else:
            digest.update(hash_file(file, HashAlgo.SHA256).encode())
        digest.update(b"\0")
    if (path / ".git").exists():
        try:
            digest.update(run(["git", "-C", path, "rev-parse", "HEAD"]).strip().encode())
        except AssemblerError as exc:  # not a usable checkout: the content alone decides
            log.debug("no git HEAD for %s: %s", path, exc)
    return digest.hexdigest()


def _tree_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        top = here == root
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _TREE_SKIP_ANY
            and not d.endswith(".egg-info")
            and not (top and d in _TREE_SKIP_TOP)
        ]
        for name in filenames:
            if name.endswith(".pyc") or (top and name in _TREE_SKIP_TOP):
                continue
            yield here / name
        # Symlinked directories are not followed by os.walk; count them as links.
        yield from (here / d for d in dirnames if (here / d).is_symlink())


def _read_constraints(location: str) -> str:
    if urlsplit(location).scheme in ("http", "https"):
        try:
            return fetch_small(make_session(), location).decode()
        except DownloadError as exc:
            raise UsageError(f"cannot fetch the constraints {location}: {exc}") from exc
    try:
        return Path(location).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the constraints {location}: {exc.strerror}") from exc


class _PipFailed(Exception):
    """A pip run failed; `said` is all it printed (its --log), `reason` a one-line summary."""

    def __init__(self, exc: CommandError, said: str) -> None:
        self.said = said
        self.reason = _pip_reason(exc.stderr, said)
        super().__init__(self.reason)


# Lines of pip's --log start with a timestamp.
_LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:,.]+ ", re.MULTILINE)


def _run_pip(work: Path, command: str, *args: str | Path, timeout: float = 1800) -> None:
    """The host's pip with the operator's configuration (index URL, proxy, CA bundle): it only
    builds wheels here (the local agent's, sdist-only dependencies).

    pip prints why a resolution failed (the requirements in conflict) on stdout, which
    CommandError does not carry, so its --log is kept and read when it fails.
    """
    transcript = work / "pip.log"
    transcript.unlink(missing_ok=True)
    argv: list[str | Path] = [
        sys.executable, "-m", "pip", command, "--disable-pip-version-check", "--no-input",
        "--progress-bar", "off", "--log", transcript, *args,
    ]  # fmt: skip
    try:
        run(argv, timeout=timeout)
    except CommandError as exc:
        try:
            said = _LOG_STAMP.sub("", transcript.read_text(errors="replace"))
        except OSError:
            said = exc.stderr
        raise _PipFailed(exc, said) from exc


def _pip_reason(stderr: str, said: str) -> str:
    """pip's first ERROR line says what went wrong (the last one is often only a hint), with
    the requirements it names as the cause of a conflict."""
    first = next((ln for ln in stderr.splitlines() if ln.startswith("ERROR:")), None)
    if first is None:
        tail = stderr.strip().splitlines()
        return tail[-1] if tail else "pip failed without a message"
    reason = first.removeprefix("ERROR:").strip()
    lines = said.splitlines()
    if "The conflict is caused by:" in lines:
        causes = []
        for line in lines[lines.index("The conflict is caused by:") + 1 :]:
            if not line.strip():
                break
            causes.append(line.strip())
        reason += " (" + "; ".join(causes) + ")"
    return reason


# ----- resolving with uv --------------------------------------------------------------------


def uv_binary() -> str:
    """The uv that the `uv` package installed beside this Python, else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):  # not in this environment: a distro's, say
        found = shutil.which("uv")
    if found is None:
        raise UsageError("uv is not installed; run `make setup`")
    return found


class _UvFailed(Exception):
    """uv found no resolution; `said` is its stderr, `reason` that as one line."""

    def __init__(self, said: str) -> None:
        self.said = said
        self.reason = uv_reason(said)
        super().__init__(self.reason)


def uv_reason(said: str) -> str:
    """uv's error with its causes on one line (it spreads them over indented lines), without
    the hints that follow."""
    text = said.split("\nhint:")[0]
    start = text.find("error:")
    if start < 0:
        tail = said.strip().splitlines()
        return tail[-1].strip() if tail else "uv failed without a message"
    return " ".join(text[start + len("error:") :].split()).replace(" cause: ", ": ")


# What uv says when building from source would be needed (a hint naming the project), and which
# versions lack a wheel (`docopt==0.6.1 has`, `all versions of docopt have`).
_NEEDS_BUILD = re.compile(r"Wheels are required for `([^`]+)`")
_NO_WHEELS = re.compile(r"(\S+) (?:has|have) no usable wheels")


def lacking_wheel(said: str) -> Requirement | None:
    """The requirement uv found no wheel for, with the versions it named when it did, or None
    when it failed for another reason."""
    named = _NEEDS_BUILD.search(said)
    if named is None:
        return None
    name = canonicalize_name(named.group(1))
    for text in _NO_WHEELS.findall(said):
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == name:
            return req
    return Requirement(name)


def _compile(
    spec: WheelhouseSpec,
    requirements: Path,
    constraints: Path | None,
    find_links: Path,
    work: Path,
) -> dict[str, Any]:
    """The pylock.toml of one `uv pip compile` for the guest, parsed."""
    lock = work / "pylock.toml"
    argv: list[str | Path] = [
        uv_binary(), "pip", "compile", "--quiet",
        # This interpreter, never one uv would download: with --only-binary nothing runs it.
        "--python", sys.executable,
        "--python-version", spec.python,
        "--python-platform", uv_platform(spec.glibc, spec.arch),
        "--only-binary", ":all:",
        "--find-links", find_links,
        "--format", "pylock.toml", "-o", lock,
    ]  # fmt: skip
    if constraints is not None:
        argv += ["-c", constraints]
    argv.append(requirements)
    try:
        # From the scratch directory: uv would read a [tool.uv] table of the current one.
        run(argv, cwd=work, timeout=1800)
    except CommandError as exc:
        raise _UvFailed(exc.stderr) from exc
    with lock.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class _Pick:
    """One wheel of the lock to fetch, and the sha256 the index published for it."""

    name: str  # canonical project name
    filename: str
    url: str  # http(s) or file
    sha256: str


def pick_wheels(lock: Mapping[str, Any], spec: WheelhouseSpec, lock_dir: Path) -> list[_Pick]:
    """For each locked package, the wheel pip would install on the guest: the one whose best
    tag comes first in the guest's supported tags (the lock lists every wheel that fits)."""
    rank = {tag: i for i, tag in enumerate(supported_tags(spec))}
    where = f"CPython {spec.python} manylinux (glibc <= {spec.glibc}) {spec.arch}"
    picks = []
    for package in lock.get("packages", []):
        name = canonicalize_name(package["name"])
        files = package.get("wheels") or ([package["archive"]] if "archive" in package else [])
        best: tuple[int, str, str, Mapping[str, Any]] | None = None
        for file in files:
            location = file.get("url") or (lock_dir / file["path"]).resolve().as_uri()
            filename = PurePosixPath(urlsplit(location).path).name
            try:
                _, _, _, wheel_tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue  # an sdist given as an archive
            fit = min((rank[t] for t in wheel_tags if t in rank), default=None)
            if fit is not None and (best is None or fit < best[0]):
                best = (fit, location, filename, file)
        if best is None:
            raise BuildError(
                STEP, f"uv locked {name} {package.get('version')} with no wheel for {where}"
            )
        _, location, filename, file = best
        sha256 = file.get("hashes", {}).get("sha256")
        if not sha256:  # nothing unverified enters the wheelhouse
            raise BuildError(STEP, f"the index published no sha256 for {filename}")
        picks.append(_Pick(name, filename, location, sha256))
    return picks


class _Quiet(Progress):
    """No bar or log lines per wheel: they are fetched several at once, and summed up after."""

    def start(self, total: int | None, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


def fetch_wheels(picks: Sequence[_Pick], out: Path) -> None:
    """Every pick into `out`, FETCH_WORKERS at a time, each kept only if its sha256 matches."""
    local = threading.local()

    def fetch(pick: _Pick) -> None:
        cancel.check()  # an interrupted build starts no more downloads
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:  # one per thread: a Session's connection pool is not shared safely
            session = local.session = make_session()
        _fetch(session, pick, out)

    with ThreadPoolExecutor(FETCH_WORKERS) as pool:
        list(pool.map(fetch, picks))  # raises the first failure


def _fetch(session: requests.Session, pick: _Pick, out: Path) -> None:
    dest = out / pick.filename
    part = part_path(dest)
    parts = urlsplit(pick.url)
    if parts.scheme == "file":  # a --find-links wheel built here, or a local index's
        try:
            shutil.copyfile(url2pathname(parts.path), part)
        except OSError as exc:
            raise BuildError(STEP, f"cannot read {pick.url}: {exc.strerror or exc}") from exc
    else:
        download(session, pick.url, part, progress=_Quiet(pick.filename))
    digest = hash_file(part, HashAlgo.SHA256)
    if digest != pick.sha256:
        part.unlink()
        raise BuildError(
            STEP,
            f"{pick.filename} from {host_of(pick.url)} has sha256 {digest}, "
            f"not {pick.sha256} as its index published",
        )
    os.replace(part, dest)


# ----- the agent's wheels -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    """A wheel's name, version and Requires-Python, from its file name and METADATA."""

    path: Path
    name: str
    version: Version
    requires_python: str | None


def read_dist(path: Path) -> _Dist:
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise BuildError(STEP, f"{path.name} is not a wheel file name") from exc
    with zipfile.ZipFile(path) as zf:
        metadata = [
            n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        ]
        if len(metadata) != 1:
            raise BuildError(STEP, f"{path.name} has no single .dist-info/METADATA")
        msg = email.parser.BytesParser().parsebytes(zf.read(metadata[0]), headersonly=True)
    return _Dist(path, name, version, msg.get("Requires-Python"))


def _download_all(
    spec: WheelhouseSpec, constraints_text: str | None, work: Path, out: Path
) -> _Dist:
    """Fill `out` with the guest's wheels; return the agent's."""
    constraints: Path | None = None
    common: list[str | Path] = []  # for pip, when it fetches an sdist
    if constraints_text is not None:
        constraints = work / "constraints.txt"
        # uv evaluates markers for the guest itself; pip, for the sdists, would not.
        env = target_environment(spec.python, spec.arch)
        constraints.write_text(constraints_for_target(constraints_text, env))
        common += ["-c", constraints]
    built = work / "built"  # wheels made here: the agent's, pure-Python sdist-only ones
    built.mkdir()

    if isinstance(spec.agent, PypiAgent):
        versions.check_agent_version(spec.agent.version, spec.python)
        agent_name = versions.AGENT_PROJECT
        root = f"{agent_name}=={spec.agent.version}"
    else:
        local = _build_local_agent(spec, work, built)
        agent_name = local.name
        # By file, not by name==version: a checkout at a release tag is also that release on
        # the index, and uv could take either.
        root = f"{local.name} @ {local.path.as_uri()}"
    requirements = work / "requirements.in"
    requirements.write_text("\n".join([root, *spec.tools]) + "\n")

    built_for: set[str] = set()
    while True:
        try:
            lock = _compile(spec, requirements, constraints, built, work)
            break
        except _UvFailed as failed:
            lacking = lacking_wheel(failed.said)
            if lacking is None or canonicalize_name(lacking.name) in built_for:
                raise BuildError(
                    STEP, f"no set of wheels for CPython {spec.python}: {failed.reason}"
                ) from failed
            built_for.add(canonicalize_name(lacking.name))
            _build_from_sdist(spec, str(lacking), common, work, built)

    picks = pick_wheels(lock, spec, work)
    agent_pick = next((p for p in picks if p.name == canonicalize_name(agent_name)), None)
    if agent_pick is None:
        raise BuildError(STEP, f"uv's resolution has no {agent_name}")
    started = time.monotonic()
    fetch_wheels(picks, out)
    log.info("fetched %d wheels in %.1f s", len(picks), time.monotonic() - started)
    agent = read_dist(out / agent_pick.filename)
    if isinstance(spec.agent, PypiAgent):
        versions.remember_requires_python(
            versions.AGENT_PROJECT, {spec.agent.version: agent.requires_python}
        )
    return agent


def _build_from_sdist(
    spec: WheelhouseSpec, requirement: str, common: list[str | Path], work: Path, built: Path
) -> None:
    where = f"CPython {spec.python} manylinux (glibc <= {spec.glibc}) {spec.arch}"
    sdists = work / "sdists" / hashlib.sha256(requirement.encode()).hexdigest()[:12]
    try:
        _run_pip(
            work, "download", "--no-deps", "--no-binary=:all:", "--python-version", spec.python,
            "-d", sdists, *common, requirement,
        )  # fmt: skip
    except _PipFailed as failed:
        raise BuildError(
            STEP, f"{requirement} has no wheel for {where} and no sdist: {failed.reason}"
        ) from failed
    sdist = _only_file(sdists, "*")
    wheel = _pip_wheel(sdist, work / "sdist-wheels", work)
    if not is_pure(wheel.name):
        raise BuildError(
            STEP,
            f"{requirement} has no wheel for {where}, and its sdist builds {wheel.name}, "
            "not a pure-Python wheel; use a version that publishes one (--constraints)",
        )
    log.info("built %s from its sdist (no wheel published)", wheel.name)
    shutil.move(wheel, built / wheel.name)


def _build_local_agent(spec: WheelhouseSpec, work: Path, built: Path) -> _Dist:
    """The agent's wheel from a checkout or sdist; trove is pure Python, so the host builds it."""
    assert isinstance(spec.agent, LocalAgent)
    wheel = _pip_wheel(spec.agent.path, work / "agent-wheel", work)
    target = built / wheel.name
    shutil.move(wheel, target)
    dist = read_dist(target)
    if not is_pure(wheel.name):
        raise UsageError(f"{spec.agent.path} builds {wheel.name}, not a pure-Python wheel")
    if not versions.admits(dist.requires_python, spec.python):
        raise UsageError(
            f"{spec.agent.path} ({dist.name} {dist.version}) requires Python "
            f"{dist.requires_python} but the guest has Python {spec.python}"
        )
    return dist


def _pip_wheel(source: Path, out: Path, work: Path) -> Path:
    try:
        _run_pip(work, "wheel", "--no-deps", "-w", out, source)
    except _PipFailed as failed:
        raise BuildError(STEP, f"cannot build a wheel of {source}: {failed.reason}") from failed
    return _only_file(out, "*.whl")


def _only_file(directory: Path, pattern: str) -> Path:
    files = sorted(directory.glob(pattern))
    if len(files) != 1:
        raise BuildError(STEP, f"expected one file in {directory}, found {len(files)}")
    return files[0]


def is_pure(wheel_name: str) -> bool:
    """py3-none-any (or py2.py3-...): the same file serves any Python 3 on any platform."""
    _, _, _, tags = parse_wheel_filename(wheel_name)
    return all(
        t.abi == "none" and t.platform == "any" and t.interpreter.startswith("py") for t in tags
    )


# ----- the cache entry ----------------------------------------------------------------------


def _write_index(
    out: Path, spec: WheelhouseSpec, agent: _Dist, constraints_sha: str | None
) -> None:
    wheels = sorted(out.glob("*.whl"))
    doc = {
        "format": FORMAT,
        "agent": {"name": agent.name, "version": str(agent.version)},
        "python": spec.python,
        "glibc": spec.glibc,
        "arch": spec.arch,
        "constraints_sha256": constraints_sha,
        "wheels": [
            {"file": w.name, "sha256": hash_file(w, HashAlgo.SHA256), "size": w.stat().st_size}
            for w in wheels
        ],
    }
    (out / INDEX_FILE).write_text(json.dumps(doc, indent=1) + "\n")


def _load(entry: Path, spec: WheelhouseSpec, constraints_sha: str | None) -> Wheelhouse | None:
    """The cached wheelhouse, or None when absent or not intact (it is then built again)."""
    try:
        doc = json.loads((entry / INDEX_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("rebuilding the agent wheelhouse %s: %s", entry.name, exc)
        return None
    wheels = []
    for row in doc["wheels"]:
        path = entry / row["file"]
        if (
            not path.is_file()
            or path.stat().st_size != row["size"]
            or hash_file(path, HashAlgo.SHA256) != row["sha256"]
        ):
            log.warning("rebuilding the agent wheelhouse %s: %s changed", entry.name, path.name)
            return None
        name, version, _, _ = parse_wheel_filename(path.name)
        wheels.append(Wheel(path, name, str(version), row["sha256"], row["size"]))
    return Wheelhouse(
        directory=entry,
        key=entry.name,
        agent_name=doc["agent"]["name"],
        agent_version=doc["agent"]["version"],
        agent_source=spec.agent.describe(),
        python=spec.python,
        glibc=spec.glibc,
        arch=spec.arch,
        constraints=spec.constraints,
        constraints_sha256=constraints_sha,
        wheels=tuple(wheels),
    )
