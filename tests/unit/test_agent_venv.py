"""The agent's environment without the network: versions, markers, the wheelhouse loop and cache
(pip replaced by a fake index), the venv tree and its tar.

Wheels here are tiny ones made by `make_wheel`; the real trove wheelhouse is in
tests/image/test_agent_venv_real.py.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from assembler.agent import venv, versions, wheelhouse
from assembler.agent.wheelhouse import (
    LocalAgent,
    PypiAgent,
    Wheel,
    Wheelhouse,
    WheelhouseSpec,
    build_wheelhouse,
    constraints_for_target,
    manylinux_platforms,
    parse_agent_source,
    target_environment,
    walk_closure,
)
from assembler.distros import RELEASES
from assembler.errors import BuildError, UsageError

HOST_PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


# ----- tiny wheels --------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    directory: Path,
    name: str,
    version: str,
    requires: tuple[str, ...] = (),
    files: dict[str, str] | None = None,
    console_scripts: dict[str, str] | None = None,
    requires_python: str | None = None,
) -> Path:
    """A valid py3-none-any wheel: METADATA, WHEEL, entry points, RECORD with hashes."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    contents = dict(files or {})
    contents[f"{info}/METADATA"] = meta
    contents[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if console_scripts:
        lines = "".join(f"{k} = {v}\n" for k, v in console_scripts.items())
        contents[f"{info}/entry_points.txt"] = "[console_scripts]\n" + lines
    record = "".join(
        f"{path},{_record_hash(text.encode())},{len(text.encode())}\n"
        for path, text in contents.items()
    )
    contents[f"{info}/RECORD"] = record + f"{info}/RECORD,,\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in contents.items():
            zf.writestr(member, text)
    return path


def fake_wheelhouse(directory: Path, python: str, wheels: list[Path], agent: str) -> Wheelhouse:
    rows = []
    for path in wheels:
        name, version = path.name.split("-")[:2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(Wheel(path, canonicalize_name(name), version, digest, path.stat().st_size))
    return Wheelhouse(
        directory, "test", agent, "1.0", "test", python, "2.36", "x86_64", None, None, tuple(rows)
    )


@pytest.fixture(autouse=True)
def cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private cache per test, and no way to PyPI: every PyPI answer here is pre-filled."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(project: str) -> dict[str, str | None]:
        raise AssertionError(f"unit tests do not ask PyPI (about {project})")

    monkeypatch.setattr(versions, "_fetch_requires_python", no_network)
    return tmp_path / "cache"


# ----- versions -----------------------------------------------------------------------------


def test_every_release_has_agent_facts() -> None:
    assert set(versions.AGENT_FACTS) == set(RELEASES)
    assert versions.default_agent_version(RELEASES["jammy"]) == "25.1.0"
    assert versions.default_agent_version(RELEASES["bookworm"]) == "26.0.0"
    assert versions.default_agent_version(RELEASES["noble"]) == "26.0.0"
    assert versions.facts_for(RELEASES["bookworm"]).glibc == "2.36"


def test_check_agent_version_from_the_cache() -> None:
    versions.remember_requires_python(
        "trove", {"26.0.0": ">=3.11", "25.1.0": ">=3.10", "1.0": None}
    )
    versions.check_agent_version("26.0.0", "3.11")
    versions.check_agent_version("26.0.0", "3.12")
    versions.check_agent_version("25.1.0", "3.10")
    versions.check_agent_version("26.0", "3.12")  # the same version, spelt short
    versions.check_agent_version("1.0", "3.10")  # no Requires-Python: admitted
    with pytest.raises(UsageError) as err:
        versions.check_agent_version("26.0.0", "3.10")
    assert str(err.value) == (
        "trove 26.0.0 requires Python >=3.11 but the guest has Python 3.10; choose another agent version"
    )
    assert "\n" not in str(err.value)


def test_check_agent_version_asks_pypi_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fetch(project: str) -> dict[str, str | None]:
        calls.append(project)
        return {"26.0.0": ">=3.11", "25.1.0": ">=3.10"}

    monkeypatch.setattr(versions, "_fetch_requires_python", fetch)
    versions.check_agent_version("25.1.0", "3.10")
    versions.check_agent_version("26.0.0", "3.12")  # every release was cached by the first ask
    assert calls == ["trove"]
    with pytest.raises(UsageError, match=r"trove 99\.0\.0 is not published on PyPI"):
        versions.check_agent_version("99.0.0", "3.12")
    with pytest.raises(UsageError, match="is not a trove version"):
        versions.check_agent_version("latest", "3.12")


def test_admits_compares_like_pip() -> None:
    assert versions.admits(">=3.10", "3.10")
    assert not versions.admits(">=3.10.4", "3.10")  # pip compares the version 3.10 too
    assert versions.admits("~=3.8", "3.12")
    assert versions.admits(None, "3.10")


# ----- spec, platforms, markers -------------------------------------------------------------


def test_parse_agent_source(tmp_path: Path) -> None:
    assert parse_agent_source("trove==26.0.0") == PypiAgent("26.0.0")
    assert parse_agent_source("25.1.0") == PypiAgent("25.1.0")
    assert parse_agent_source(str(tmp_path)) == LocalAgent(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        parse_agent_source(str(tmp_path / "nope"))
    with pytest.raises(UsageError):
        parse_agent_source("trove==bogus")


def test_spec_for_release_uses_the_table() -> None:
    spec = WheelhouseSpec.for_release(RELEASES["jammy"])
    assert spec == WheelhouseSpec(PypiAgent("25.1.0"), "3.10", "2.35")
    assert spec.abi == "cp310"


def test_manylinux_platforms_stop_at_the_guests_glibc() -> None:
    tags = manylinux_platforms("2.36", "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64"  # newest first: pip prefers earlier tags
    assert "manylinux_2_37_x86_64" not in tags
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux_2_5_x86_64"} <= set(tags)
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "linux_x86_64" not in tags
    assert manylinux_platforms("2.35", "x86_64")[0] == "manylinux_2_35_x86_64"
    with pytest.raises(UsageError):
        manylinux_platforms("3.1", "x86_64")


def test_target_environment_is_the_guests() -> None:
    env = target_environment("3.10", "x86_64")
    assert env["python_version"] == "3.10"
    assert env["python_full_version"] == "3.10.0"
    assert Requirement("tomli; python_version < '3.11'").marker.evaluate(env)  # type: ignore[union-attr]
    assert not Requirement("x; python_version >= '3.11'").marker.evaluate(env)  # type: ignore[union-attr]
    assert not Requirement("pywin32; sys_platform == 'win32'").marker.evaluate(env)  # type: ignore[union-attr]


def test_constraints_are_filtered_for_the_guest() -> None:
    text = (
        "# upper-constraints, abridged\n"
        "numpy===1.26.4;python_version=='3.10'\n"
        "numpy===2.2.0;python_version>='3.11'\n"
        "oslo.messaging===18.1.0  # comment\n"
        "pywin32===306;sys_platform=='win32'\n"
        "\n"
        "-c other.txt\n"
    )
    for_310 = constraints_for_target(text, target_environment("3.10", "x86_64"))
    assert for_310.splitlines() == ["numpy===1.26.4", "oslo.messaging===18.1.0", "-c other.txt"]
    for_312 = constraints_for_target(text, target_environment("3.12", "x86_64"))
    assert for_312.splitlines()[0] == "numpy===2.2.0"


def test_closure_follows_the_guests_markers(tmp_path: Path) -> None:
    wheels = [
        make_wheel(
            tmp_path,
            "trove",
            "1.0",
            (
                "oslo-x>=1",
                "tomli; python_version < '3.11'",
                "legacy; python_version >= '3.11'",
                "docs; extra == 'doc'",
            ),
        ),
        make_wheel(tmp_path, "oslo-x", "1.2", ("six",)),
        make_wheel(tmp_path, "six", "1.0"),
        make_wheel(tmp_path, "legacy", "1.0"),
    ]
    dists = {d.name: d for d in map(wheelhouse.read_dist, wheels)}
    reached, missing = walk_closure(
        dists, [Requirement("trove==1.0")], target_environment("3.10", "x86_64")
    )
    assert reached == {"trove", "oslo-x", "six"}  # legacy is the host's (3.11) only
    assert [str(r) for r in missing] == ['tomli; python_version < "3.11"']
    reached, missing = walk_closure(
        dists, [Requirement("trove==1.0")], target_environment("3.11", "x86_64")
    )
    assert reached == {"trove", "oslo-x", "six", "legacy"} and not missing
    _, missing = walk_closure(
        dists, [Requirement("oslo-x>=2")], target_environment("3.11", "x86_64")
    )
    assert [str(r) for r in missing] == ["oslo-x>=2"]  # present, but not a version that fits


def test_is_pure() -> None:
    assert wheelhouse.is_pure("docopt-0.6.2-py2.py3-none-any.whl")
    assert wheelhouse.is_pure("trove-26.0.0-py3-none-any.whl")
    assert not wheelhouse.is_pure("crcmod-1.7-cp311-cp311-linux_x86_64.whl")
    assert not wheelhouse.is_pure("x-1-cp311-abi3-manylinux_2_17_x86_64.whl")


# ----- the wheelhouse, pip replaced by a fake index -----------------------------------------

# name -> (version, Requires-Dist); the fake pip resolves with the HOST's markers, as pip does.
FAKE_INDEX: dict[str, tuple[str, tuple[str, ...]]] = {
    "trove": (
        "9.9.9",
        ("oslo-x>=1", "tomli; python_version < '3.11'", "legacy; python_version >= '3.11'"),
    ),
    "oslo-x": ("1.2", ("six",)),
    "six": ("1.0", ()),
    "tomli": ("2.0", ()),
    "legacy": ("1.0", ()),
    "pip": ("24.0", ()),
}


class FakePip:
    def __init__(self, index: dict[str, tuple[str, tuple[str, ...]]], host_python: str) -> None:
        self.index = index
        self.host_env = {
            **{k: str(v) for k, v in default_environment().items()},
            "python_version": host_python,
        }
        self.calls: list[list[str]] = []

    def __call__(
        self,
        spec: WheelhouseSpec,
        requirements: list[str | Path],
        common: list[str | Path],
        dest: Path,
        work: Path,
        built: Path,
    ) -> None:
        self.calls.append([str(r) for r in requirements])
        todo = [Requirement(str(r)).name for r in requirements]
        while todo:
            name = canonicalize_name(todo.pop())
            if any(p.name.startswith(name.replace("-", "_") + "-") for p in dest.glob("*.whl")):
                continue
            version, requires = self.index[name]
            make_wheel(dest, name, version, requires)
            for text in requires:
                req = Requirement(text)
                if req.marker is None or req.marker.evaluate({**self.host_env, "extra": ""}):
                    todo.append(req.name)


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> FakePip:
    fake = FakePip(FAKE_INDEX, host_python="3.11")
    monkeypatch.setattr(wheelhouse, "_pip_download", fake)
    versions.remember_requires_python("trove", {"9.9.9": ">=3.8"})
    return fake


def test_wheelhouse_corrects_the_hosts_markers(fake_pip: FakePip, cache_home: Path) -> None:
    house = build_wheelhouse(WheelhouseSpec(PypiAgent("9.9.9"), "3.10", "2.35"))
    names = sorted(w.name for w in house.wheels)
    # tomli: needed on 3.10, skipped by a resolver running on 3.11; legacy: the reverse.
    assert names == ["oslo-x", "pip", "six", "tomli", "trove"]
    assert fake_pip.calls == [["trove==9.9.9", "pip"], ["trove==9.9.9", "pip", "tomli"]]
    assert house.agent_wheel.name == "trove" and house.agent_version == "9.9.9"
    assert "trove" not in {w.name for w in house.requirements()}
    for wheel in house.wheels:
        assert wheel.path.parent == house.directory
        assert hashlib.sha256(wheel.path.read_bytes()).hexdigest() == wheel.sha256
    manifest = house.manifest()
    assert manifest["version"] == "9.9.9" and manifest["source"] == "PyPI trove==9.9.9"
    assert set(manifest["wheels"]) == {w.path.name for w in house.wheels}
    assert house.directory.parent == cache_home / "trove-image-assembler" / "wheelhouses"
    assert not list(house.directory.parent.glob(".tmp-*"))  # the build's scratch is gone


def test_wheelhouse_is_cached_by_its_inputs(fake_pip: FakePip, tmp_path: Path) -> None:
    spec = WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36")
    first = build_wheelhouse(spec)
    assert build_wheelhouse(spec) == first
    assert len(fake_pip.calls) == 1
    assert sorted(w.name for w in first.wheels) == ["legacy", "oslo-x", "pip", "six", "trove"]

    constraints = tmp_path / "upper.txt"
    constraints.write_text("six===1.0\n")
    constrained = build_wheelhouse(
        WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36", str(constraints))
    )
    assert constrained.directory != first.directory
    assert constrained.constraints_sha256 == hashlib.sha256(b"six===1.0\n").hexdigest()
    assert len(fake_pip.calls) == 2

    # An altered cache entry is not trusted: it is built again.
    first.wheels[0].path.write_bytes(b"tampered")
    rebuilt = build_wheelhouse(spec)
    assert len(fake_pip.calls) == 3 and rebuilt.directory == first.directory
    assert rebuilt.wheels[0].path.read_bytes() != b"tampered"


def test_cache_key_covers_every_input(tmp_path: Path) -> None:
    base = WheelhouseSpec(PypiAgent("26.0.0"), "3.11", "2.36")
    key = wheelhouse.cache_key(base, "pypi:trove==26.0.0", None)
    assert key.startswith("trove-26.0.0-cp311-x86_64-")
    others = {
        wheelhouse.cache_key(
            WheelhouseSpec(PypiAgent("26.0.0"), "3.12", "2.36"), "pypi:trove==26.0.0", None
        ),
        wheelhouse.cache_key(
            WheelhouseSpec(PypiAgent("26.0.0"), "3.11", "2.39"), "pypi:trove==26.0.0", None
        ),
        wheelhouse.cache_key(base, "pypi:trove==26.0.0", "ab" * 32),
        wheelhouse.cache_key(base, "pypi:trove==25.1.0", None),
        wheelhouse.cache_key(
            WheelhouseSpec(PypiAgent("26.0.0"), "3.11", "2.36", tools=()),
            "pypi:trove==26.0.0",
            None,
        ),
    }
    assert key not in others and len(others) == 5


def test_tree_hash_ignores_what_a_build_writes(tmp_path: Path) -> None:
    tree = tmp_path / "trove"
    (tree / "trove" / "cmd").mkdir(parents=True)
    (tree / "trove" / "cmd" / "guest.py").write_text("print('hi')\n")
    (tree / "setup.cfg").write_text("[metadata]\nname = trove\n")
    before = wheelhouse.tree_hash(tree)
    (tree / "build" / "lib").mkdir(parents=True)
    (tree / "trove.egg-info").mkdir()
    (tree / "ChangeLog").write_text("changes\n")
    (tree / "trove" / "cmd" / "__pycache__").mkdir()
    (tree / "trove" / "cmd" / "__pycache__" / "guest.cpython-311.pyc").write_bytes(b"\0")
    assert wheelhouse.tree_hash(tree) == before
    (tree / "trove" / "cmd" / "guest.py").write_text("print('changed')\n")
    assert wheelhouse.tree_hash(tree) != before


def test_sdist_fallback_accepts_only_pure_wheels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36")

    def fake_run(argv: list[str | Path], **_: object) -> str:
        args = [str(a) for a in argv]
        if "download" in args:
            (Path(args[args.index("-d") + 1]) / "crcmod-1.7.tar.gz").parent.mkdir(
                parents=True, exist_ok=True
            )
            (Path(args[args.index("-d") + 1]) / "crcmod-1.7.tar.gz").write_bytes(b"sdist")
        else:  # pip wheel: the C extension makes a platform wheel
            out = Path(args[args.index("-w") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "crcmod-1.7-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel")
        return ""

    monkeypatch.setattr(wheelhouse, "run", fake_run)
    with pytest.raises(BuildError) as err:
        wheelhouse._build_from_sdist(spec, "crcmod", [], tmp_path, tmp_path / "built")
    assert "crcmod has no wheel for CPython 3.11 manylinux (glibc <= 2.36) x86_64" in str(err.value)
    assert "crcmod-1.7-cp311-cp311-linux_x86_64.whl, not a pure-Python wheel" in str(err.value)
    assert "\n" not in str(err.value)


# ----- the venv tree and its tar ------------------------------------------------------------


@pytest.fixture
def toy_house(tmp_path: Path) -> Wheelhouse:
    d = tmp_path / "wheels"
    agent = make_wheel(
        d, "trove", "1.0", ("toylib",),
        files={"trove/__init__.py": "", "trove/cmd.py": "import toylib\ndef main():\n    print('agent', toylib.VALUE)\n"},
        console_scripts={"trove-guestagent": "trove.cmd:main"},
    )  # fmt: skip
    lib = make_wheel(d, "toylib", "2.0", files={"toylib/__init__.py": "VALUE = 42\n"})
    return fake_wheelhouse(d, HOST_PY, [agent, lib], "trove")


def test_venv_tree_for_the_guest_path(toy_house: Wheelhouse, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    root = venv.lay_out_venv(toy_house, staging)
    assert root == staging / "opt" / "guest-agent-venv"
    cfg = (root / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and "include-system-site-packages = false\n" in cfg
    assert f"version = {HOST_PY}\n" in cfg
    assert (root / "bin" / "python3").readlink() == Path(f"/usr/bin/python{HOST_PY}")
    assert (root / "bin" / "python").readlink() == Path("python3")
    assert (root / "bin" / f"python{HOST_PY}").readlink() == Path("python3")
    script = (root / "bin" / "trove-guestagent").read_text()
    assert script.startswith("#!/opt/guest-agent-venv/bin/python3\n")
    site = root / "lib" / f"python{HOST_PY}" / "site-packages"
    assert (site / "trove" / "cmd.py").is_file() and (site / "toylib" / "__init__.py").is_file()
    assert (site / "trove-1.0.dist-info" / "INSTALLER").read_bytes() == b"trove-image-assembler\n"
    assert 'VIRTUAL_ENV="/opt/guest-agent-venv"' in (root / "bin" / "activate").read_text()
    assert not list(root.rglob("*.pyc"))
    with pytest.raises(UsageError, match="already exists"):
        venv.lay_out_venv(toy_house, staging)


def test_dev_venv_leaves_the_agent_out(toy_house: Wheelhouse, tmp_path: Path) -> None:
    root = venv.lay_out_venv(toy_house, tmp_path / "s", include_agent=False)
    site = root / "lib" / f"python{HOST_PY}" / "site-packages"
    assert (site / "toylib").is_dir() and not (site / "trove").exists()
    assert not (root / "bin" / "trove-guestagent").exists()
    wheels = venv.stage_wheelhouse(toy_house, tmp_path / "s")
    assert wheels == tmp_path / "s" / "opt" / "guest-agent-wheels"
    assert sorted(p.name for p in wheels.iterdir()) == [
        "constraints.txt",
        "toylib-2.0-py3-none-any.whl",
    ]
    assert (wheels / "constraints.txt").read_text() == "toylib==2.0\n"


@pytest.mark.skipif(
    not Path(f"/usr/bin/python{HOST_PY}").exists(), reason="needs /usr/bin/python3.X"
)
def test_venv_runs_when_laid_out_at_a_real_prefix(toy_house: Wheelhouse, tmp_path: Path) -> None:
    # The staging dir is / and the prefix a real directory: the tree is then usable here as it
    # will be in a guest with the same Python.
    prefix = PurePosixPath(tmp_path / "agent-venv")
    root = venv.lay_out_venv(toy_house, Path("/"), prefix, compile_bytecode=True)
    out = subprocess.run(
        [root / "bin" / "trove-guestagent"], capture_output=True, text=True, check=True
    )
    assert out.stdout == "agent 42\n"
    probe = "import sys, toylib; print(sys.prefix, toylib.__file__)"
    out = subprocess.run(
        [root / "bin" / "python3", "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[0] == str(prefix)
    assert list(root.rglob(f"toylib/__pycache__/__init__.cpython-{HOST_PY.replace('.', '')}.pyc"))


def test_byte_compiling_needs_the_guests_python(toy_house: Wheelhouse, tmp_path: Path) -> None:
    other = Wheelhouse(**{**toy_house.__dict__, "python": "3.9" if HOST_PY != "3.9" else "3.10"})
    with pytest.raises(UsageError, match="cannot byte-compile"):
        venv.lay_out_venv(other, tmp_path / "s", compile_bytecode=True)
    venv.lay_out_venv(other, tmp_path / "s")  # without: any Python


def test_tar_is_owned_by_number_and_spares_parents(toy_house: Wheelhouse, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    venv.lay_out_venv(toy_house, staging)
    venv.stage_wheelhouse(toy_house, staging)
    (staging / "opt" / "guest-agent-venv" / "bin" / "trove-guestagent").chmod(
        0o700
    )  # a tight umask
    tar_path = venv.tar_tree(
        staging, tmp_path / "agent.tar", [venv.VENV_PREFIX, venv.WHEELS_PREFIX], uid=1000, gid=0
    )
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "opt" not in members  # /opt keeps its owner in the guest
    assert "opt/guest-agent-venv" in members and "opt/guest-agent-wheels/constraints.txt" in members
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(1000, 0, "", "")}
    assert members["opt/guest-agent-venv/bin/trove-guestagent"].mode == 0o755
    assert members["opt/guest-agent-venv/pyvenv.cfg"].mode == 0o644
    assert members["opt/guest-agent-venv/bin"].mode == 0o755
    python3 = members["opt/guest-agent-venv/bin/python3"]
    assert python3.issym() and python3.linkname == f"/usr/bin/python{HOST_PY}"
    # The same tree packs to the same bytes.
    again = venv.tar_tree(
        staging, tmp_path / "again.tar", [venv.VENV_PREFIX, venv.WHEELS_PREFIX], uid=1000, gid=0
    )
    assert again.read_bytes() == tar_path.read_bytes()


PIP_CONFLICT = """\
Looking in indexes: https://pypi.org/simple

The conflict is caused by:
    toy-agent 1.0 depends on docopt>=0.6
    The user requested (constraint) docopt===0.6.1

To fix this you could try to:
"""


def test_pip_failures_are_read_for_suspects_and_one_line() -> None:
    suspects, certain = wheelhouse._suspects(PIP_CONFLICT)
    assert not certain  # a conflict may be real: each suspect is probed before an sdist build
    assert [str(r) for r in suspects] == ["docopt===0.6.1,>=0.6"]
    suspects, certain = wheelhouse._suspects(
        "ERROR: No matching distribution found for docopt<0.7\n"
    )
    assert certain and [str(r) for r in suspects] == ["docopt<0.7"]
    stderr = "ERROR: Cannot install toy-agent==1.0 because these package versions have conflicting dependencies.\nERROR: ResolutionImpossible: for help visit https://pip.pypa.io\n"
    reason = wheelhouse._pip_reason(stderr, PIP_CONFLICT)
    assert reason == (
        "Cannot install toy-agent==1.0 because these package versions have conflicting dependencies. "
        "(toy-agent 1.0 depends on docopt>=0.6; The user requested (constraint) docopt===0.6.1)"
    )


def test_check_agent_source_before_image_work(tmp_path: Path) -> None:
    versions.remember_requires_python("trove", {"26.0.0": ">=3.11"})
    wheelhouse.check_agent_source(PypiAgent("26.0.0"), "3.12")
    with pytest.raises(UsageError, match="requires Python"):
        wheelhouse.check_agent_source(PypiAgent("26.0.0"), "3.10")
    wheelhouse.check_agent_source(LocalAgent(tmp_path), "3.10")
    with pytest.raises(UsageError, match="does not exist"):
        wheelhouse.check_agent_source(LocalAgent(tmp_path / "gone"), "3.10")
    assert venv.host_can_compile(HOST_PY) and not venv.host_can_compile("2.7")
