"""The guest agent's wheelhouse: every wheel it needs, for the guest's Python, fetched on the host.

pip inside the guest or the appliance can never reach an index, and Python under emulation is
slow, so all packaging work happens here: `pip download --only-binary=:all:` with the guest's
Python version, ABI and manylinux platforms (up to the guest's glibc). Two things pip does not do
for a foreign target are done here:

- pip evaluates environment markers (`tomli; python_version < "3.11"`) against the Python it
  runs on, not `--python-version` (pypa/pip#6117, #11010). The constraints file is filtered for
  the guest's markers before pip reads it, and after each download the dependency closure is
  walked again with the guest's markers: requirements pip skipped are added as top-level
  requirements for another round, and wheels only the host's markers wanted are dropped.
- a dependency published only as an sdist is built into a wheel here, and accepted only when
  it comes out pure Python (py3-none-any); a compiled one would be for the host's Python.

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
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

from assembler.agent import versions
from assembler.distros import Release
from assembler.download import fetch_small, hash_file, locked, make_session
from assembler.errors import AssemblerError, BuildError, CommandError, DownloadError, UsageError
from assembler.paths import cache_dir
from assembler.run import run
from assembler.sources import HashAlgo

log = logging.getLogger(__name__)

STEP = "agent-wheelhouse"
# Bumped when the layout or the way a wheelhouse is made changes, so old entries are not reused.
FORMAT = 1
INDEX_FILE = "wheelhouse.json"
# pip rounds for markers pip evaluated for the host, and sdist-only dependencies built here.
MAX_ROUNDS = 6

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


def manylinux_platforms(glibc: str, arch: str) -> tuple[str, ...]:
    """Every manylinux tag a guest with this glibc runs, newest first (pip prefers earlier)."""
    major, _, minor_text = glibc.partition(".")
    if major != "2" or not minor_text.isdigit():
        raise UsageError(f"glibc {glibc} is not a 2.X version")
    minor = int(minor_text)
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, OLDEST_MANYLINUX_GLIBC_MINOR - 1, -1)]
    tags += [f"{alias}_{arch}" for alias, m in LEGACY_MANYLINUX if m <= minor]
    return tuple(tags)


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


def _applies(req: Requirement, env: Mapping[str, str], extras: Iterable[str] = ()) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))


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
        for stale in root.glob(f".tmp-{key}-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = root / f".tmp-{key}-{os.getpid()}"
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
    """The host's pip with the operator's configuration (index URL, proxy, CA bundle).

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


def _target_args(spec: WheelhouseSpec) -> list[str]:
    args = [
        "--only-binary=:all:",
        "--python-version", spec.python,
        "--implementation", "cp",
        "--abi", spec.abi,
    ]  # fmt: skip
    for tag in manylinux_platforms(spec.glibc, spec.arch):
        args += ["--platform", tag]
    return args


@dataclass(frozen=True)
class _Dist:
    """A downloaded wheel as the closure walk needs it."""

    path: Path
    name: str
    version: Version
    requires: tuple[Requirement, ...]
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
    requires = []
    for text in msg.get_all("Requires-Dist") or []:
        try:
            requires.append(Requirement(text))
        except InvalidRequirement as exc:
            raise BuildError(STEP, f"{path.name} requires {text!r}: {exc}") from exc
    return _Dist(path, name, version, tuple(requires), msg.get("Requires-Python"))


def walk_closure(
    dists: Mapping[str, _Dist], roots: Iterable[Requirement], env: Mapping[str, str]
) -> tuple[set[str], list[Requirement]]:
    """(names reached from roots with the guest's markers, requirements no wheel satisfies)."""
    reached: set[str] = set()
    missing: list[Requirement] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        dist = dists.get(name)
        if dist is None or not req.specifier.contains(dist.version, prereleases=True):
            missing.append(req)
            continue
        extras = frozenset(canonicalize_name(e) for e in req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        reached.add(name)
        todo.extend(dep for dep in dist.requires if _applies(dep, env, extras))
    return reached, missing


def _download_all(
    spec: WheelhouseSpec, constraints_text: str | None, work: Path, out: Path
) -> _Dist:
    """Fill `out` with the guest's wheels; return the agent's."""
    env = target_environment(spec.python, spec.arch)
    common: list[str | Path] = []
    if constraints_text is not None:
        constraints = work / "constraints.txt"
        constraints.write_text(constraints_for_target(constraints_text, env))
        common += ["-c", constraints]
    built = work / "built"  # wheels made here: the agent's, pure-Python sdist-only ones
    built.mkdir()
    common += ["--find-links", built]

    if isinstance(spec.agent, PypiAgent):
        versions.check_agent_version(spec.agent.version, spec.python)
        root_arg: str | Path = f"{versions.AGENT_PROJECT}=={spec.agent.version}"
        root = Requirement(str(root_arg))
    else:
        local = _build_local_agent(spec, work, built)
        root_arg, root = local.path, Requirement(f"{local.name}=={local.version}")

    extra: list[str] = []
    for attempt in range(1, MAX_ROUNDS + 1):
        dest = work / f"round-{attempt}"
        _pip_download(spec, [root_arg, *spec.tools, *extra], common, dest, work, built)
        dists = {d.name: d for d in map(read_dist, dest.glob("*.whl"))}
        reached, missing = walk_closure(dists, [root, *map(Requirement, spec.tools)], env)
        if not missing:
            break
        wanted = sorted({_unmarked(r) for r in missing} - set(extra))
        if not wanted:
            names = ", ".join(sorted({str(r) for r in missing}))
            raise BuildError(STEP, f"pip did not resolve {names} for CPython {spec.python}")
        log.info("adding requirements pip skipped for the host's markers: %s", ", ".join(wanted))
        extra += wanted
    else:
        raise BuildError(STEP, f"no complete set of wheels after {MAX_ROUNDS} rounds")

    for name, dist in dists.items():
        if name in reached:
            shutil.copy2(dist.path, out / dist.path.name)
        else:
            log.info("leaving out %s: only the host's Python needs it", dist.path.name)
    agent = dists[canonicalize_name(root.name)]
    if isinstance(spec.agent, PypiAgent):
        versions.remember_requires_python(
            versions.AGENT_PROJECT, {spec.agent.version: agent.requires_python}
        )
    return agent


# What pip says when no binary wheel fits: plainly, or (when a constraint pins the version) as a
# conflict naming the requirements involved.
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_CONFLICT = re.compile(r"(?:depends on|The user requested(?: \(constraint\))?) (\S+)")


def _suspects(said: str) -> tuple[list[Requirement], bool]:
    """(requirements that may lack a binary wheel, whether pip said so for certain)."""
    match = _NO_MATCH.search(said)
    texts, certain = ([match.group(1)], True) if match else (_CONFLICT.findall(said), False)
    merged: dict[str, Requirement] = {}
    for text in texts:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        if name in merged:  # one requirement with every bound pip named: docopt>=0.6,===0.6.1
            merged[name].specifier &= req.specifier
        else:
            req.marker = None
            merged[name] = req
    return list(merged.values()), certain


def _pip_download(
    spec: WheelhouseSpec,
    requirements: list[str | Path],
    common: list[str | Path],
    dest: Path,
    work: Path,
    built: Path,
) -> None:
    """One `pip download` of binary wheels for the guest; a requirement that has no such wheel
    is built from its sdist (pure Python only) and the download tried again."""
    tried: set[str] = set()
    while True:
        try:
            _run_pip(work, "download", "-d", dest, *_target_args(spec), *common, *requirements)
            return
        except _PipFailed as failed:
            suspects, certain = _suspects(failed.said)
            fixed = False
            for req in suspects:
                name = canonicalize_name(req.name)
                if name in tried or (not certain and _has_wheel(spec, str(req), common, work)):
                    continue
                tried.add(name)
                _build_from_sdist(spec, str(req), common, work, built)
                fixed = True
            if not fixed:
                raise BuildError(STEP, f"pip download failed: {failed.reason}") from failed


def _has_wheel(
    spec: WheelhouseSpec, requirement: str, common: list[str | Path], work: Path
) -> bool:
    """Whether one requirement, alone, has a binary wheel for the guest (a conflict pip
    reports may be a real one, not a missing wheel)."""
    probe = work / "probe"
    try:
        _run_pip(
            work, "download", "--no-deps", "-d", probe, *_target_args(spec), *common, requirement
        )
    except _PipFailed:
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return True


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
