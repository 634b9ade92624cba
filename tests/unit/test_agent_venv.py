"""The agent's environment without the network: versions, markers, the wheelhouse and its cache
(uv replaced by a fake index), the venv tree and its tar.

Wheels here are tiny ones made by `make_wheel`; the real trove wheelhouse is in
tests/image/test_agent_venv_real.py.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
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
)
from assembler.distros import RELEASES
from assembler.errors import BuildError, CommandError, UsageError
from assembler.paths import cache_dir

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


def test_is_pure() -> None:
    assert wheelhouse.is_pure("docopt-0.6.2-py2.py3-none-any.whl")
    assert wheelhouse.is_pure("trove-26.0.0-py3-none-any.whl")
    assert not wheelhouse.is_pure("crcmod-1.7-cp311-cp311-linux_x86_64.whl")
    assert not wheelhouse.is_pure("x-1-cp311-abi3-manylinux_2_17_x86_64.whl")


# ----- the wheelhouse, uv replaced by a fake index -----------------------------------------

# name -> (version, Requires-Dist); the fake uv resolves with the GUEST's markers, as uv does.
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

UV_NO_WHEEL = """\
error: No solution found when resolving dependencies
  cause: Because docopt==0.6.1 has no usable wheels and you require docopt==0.6.1, we can
         conclude that your requirements are unsatisfiable.

hint: Wheels are required for `docopt` because building from source is disabled for all packages (i.e., with `--no-build`)
"""


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class FakeUv:
    """`uv pip compile`: resolves FAKE_INDEX for the --python-version it is given and writes a
    pylock.toml whose wheels are files here (file:// URLs), or fails as uv does."""

    def __init__(self, index: dict[str, tuple[str, tuple[str, ...]]], files: Path) -> None:
        self.index = index
        self.files = files
        self.calls: list[list[str]] = []
        self.wrong_hash: set[str] = set()  # projects whose published sha256 is not the file's
        self.no_wheel: set[str] = set()  # projects uv finds no wheel for (but in --find-links)

    def __call__(self, argv: list[str | Path], **_: object) -> str:
        args = [str(a) for a in argv]
        assert args[1:3] == ["pip", "compile"], args
        self.calls.append(args)
        env = {
            **target_environment(args[args.index("--python-version") + 1], "x86_64"),
            "extra": "",
        }
        find_links = Path(args[args.index("--find-links") + 1])
        packages = []
        todo = [Requirement(line) for line in Path(args[-1]).read_text().split()]
        seen: set[str] = set()
        while todo:
            req = todo.pop()
            name = canonicalize_name(req.name)
            if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
                continue
            seen.add(name)
            version, requires = self.index[name]
            built = sorted(find_links.glob(f"{name.replace('-', '_')}-*.whl"))
            if built:
                wheel = built[0]
            elif name in self.no_wheel:
                raise CommandError(args, 1, UV_NO_WHEEL)
            else:
                wheel = make_wheel(self.files, name, version, requires)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if name in self.wrong_hash:
                digest = "0" * 64
            packages.append(
                f"[[packages]]\nname = {_toml_str(name)}\nversion = {_toml_str(version)}\n"
                f"wheels = [{{ url = {_toml_str(wheel.as_uri())}, hashes = {{ sha256 = {_toml_str(digest)} }} }}]\n"
            )
            todo.extend(Requirement(r) for r in requires)
        lock = Path(args[args.index("-o") + 1])
        lock.write_text('lock-version = "1.0"\n\n' + "\n".join(packages))
        return ""


@pytest.fixture
def fake_uv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeUv:
    fake = FakeUv(FAKE_INDEX, tmp_path / "index")
    monkeypatch.setattr(wheelhouse, "uv_binary", lambda: "uv")
    monkeypatch.setattr(wheelhouse, "run", fake)
    versions.remember_requires_python("trove", {"9.9.9": ">=3.8"})
    return fake


def test_wheelhouse_resolves_for_the_guest(fake_uv: FakeUv, cache_home: Path) -> None:
    house = build_wheelhouse(WheelhouseSpec(PypiAgent("9.9.9"), "3.10", "2.35"))
    names = sorted(w.name for w in house.wheels)
    # tomli: needed on 3.10 (a resolver on a 3.11 host would skip it); legacy: the reverse.
    assert names == ["oslo-x", "pip", "six", "tomli", "trove"]
    (argv,) = fake_uv.calls
    assert argv[argv.index("--python-version") + 1] == "3.10"
    assert argv[argv.index("--python-platform") + 1] == "x86_64-manylinux_2_35"
    assert argv[argv.index("--only-binary") + 1] == ":all:"
    assert argv[argv.index("--python") + 1] == sys.executable  # never a Python uv downloads
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


def test_wheelhouse_is_cached_by_its_inputs(fake_uv: FakeUv, tmp_path: Path) -> None:
    spec = WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36")
    first = build_wheelhouse(spec)
    assert build_wheelhouse(spec) == first  # offline: uv is not asked again
    assert len(fake_uv.calls) == 1
    assert sorted(w.name for w in first.wheels) == ["legacy", "oslo-x", "pip", "six", "trove"]

    constraints = tmp_path / "upper.txt"
    constraints.write_text(
        "six===1.0;python_version=='3.11'\nlegacy===0.1;python_version=='3.10'\n"
    )
    constrained = build_wheelhouse(
        WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36", str(constraints))
    )
    assert constrained.directory != first.directory
    assert constrained.constraints_sha256 == hashlib.sha256(constraints.read_bytes()).hexdigest()
    assert len(fake_uv.calls) == 2
    passed = fake_uv.calls[1]
    assert passed[passed.index("-c") + 1].endswith("constraints.txt")

    # An altered cache entry is not trusted: it is built again.
    first.wheels[0].path.write_bytes(b"tampered")
    rebuilt = build_wheelhouse(spec)
    assert len(fake_uv.calls) == 3 and rebuilt.directory == first.directory
    assert rebuilt.wheels[0].path.read_bytes() != b"tampered"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: only the hash can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "bytes-flipped"])
def test_a_damaged_cached_wheel_is_fetched_again(
    fake_uv: FakeUv, damage: Callable[[Path], None]
) -> None:
    spec = WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36")
    first = build_wheelhouse(spec)
    wheel = first.wheels[-1].path
    good = wheel.read_bytes()
    damage(wheel)
    again = build_wheelhouse(spec)
    assert len(fake_uv.calls) == 2  # not trusted: resolved and fetched again
    assert again.directory == first.directory and wheel.read_bytes() == good


def test_a_damaged_wheelhouse_index_is_built_again(fake_uv: FakeUv) -> None:
    spec = WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36")
    first = build_wheelhouse(spec)
    index = first.directory / wheelhouse.INDEX_FILE
    index.write_text(index.read_text()[:40])
    assert build_wheelhouse(spec).wheels == first.wheels
    assert len(fake_uv.calls) == 2


def test_a_wheel_whose_hash_is_not_the_indexs_is_refused(fake_uv: FakeUv) -> None:
    fake_uv.wrong_hash.add("six")
    with pytest.raises(BuildError) as err:
        build_wheelhouse(WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36"))
    assert "six-1.0-py3-none-any.whl from file://" in str(err.value)
    assert f"not {'0' * 64} as its index published" in str(err.value)
    root = cache_dir() / "wheelhouses"
    assert not [p for p in root.iterdir() if not p.name.endswith(".lock")]  # nothing kept


def test_an_sdist_only_dependency_is_built_and_offered_to_uv(
    fake_uv: FakeUv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_uv.index = {**FAKE_INDEX, "oslo-x": ("1.2", ("docopt",)), "docopt": ("0.6.1", ())}
    fake_uv.no_wheel.add("docopt")
    asked: list[str] = []

    def build(
        spec: WheelhouseSpec, requirement: str, common: list[str | Path], work: Path, built: Path
    ) -> None:
        asked.append(requirement)
        make_wheel(built, "docopt", "0.6.1")

    monkeypatch.setattr(wheelhouse, "_build_from_sdist", build)
    house = build_wheelhouse(WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36"))
    assert asked == ["docopt==0.6.1"]  # the versions uv named
    assert len(fake_uv.calls) == 2
    assert "docopt-0.6.1-py3-none-any.whl" in {w.path.name for w in house.wheels}


def test_uv_failures_become_one_line(fake_uv: FakeUv, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_uv.no_wheel.add("oslo-x")
    monkeypatch.setattr(wheelhouse, "_build_from_sdist", lambda *a: None)  # builds nothing
    with pytest.raises(BuildError) as err:
        build_wheelhouse(WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36"))
    assert str(err.value) == (
        "step agent-wheelhouse failed: no set of wheels for CPython 3.11: No solution found when "
        "resolving dependencies: Because docopt==0.6.1 has no usable wheels and you require "
        "docopt==0.6.1, we can conclude that your requirements are unsatisfiable."
    )


def test_uv_messages_are_read_for_the_wheel_it_lacks() -> None:
    assert str(wheelhouse.lacking_wheel(UV_NO_WHEEL)) == "docopt==0.6.1"
    every = "cause: Because all versions of docopt have no usable wheels and you require docopt\n\nhint: Wheels are required for `docopt` because building"
    assert str(wheelhouse.lacking_wheel(every)) == "docopt"
    conflict = "error: No solution found when resolving dependencies\n  cause: Because you require six>=1.17 and six==1.16.0, we can conclude that your requirements are unsatisfiable.\n"
    assert wheelhouse.lacking_wheel(conflict) is None
    assert wheelhouse.uv_reason(conflict) == (
        "No solution found when resolving dependencies: Because you require six>=1.17 and "
        "six==1.16.0, we can conclude that your requirements are unsatisfiable."
    )
    assert wheelhouse.uv_reason("") == "uv failed without a message"


def test_the_wheel_pip_would_install_is_picked(tmp_path: Path) -> None:
    spec = WheelhouseSpec(PypiAgent("9.9.9"), "3.11", "2.36")
    sha = {"hashes": {"sha256": "ab" * 32}}
    lock = {
        "packages": [
            {
                "name": "Wrapt",
                "version": "2.0",
                "wheels": [
                    {"url": "https://files.example/wrapt-2.0-py3-none-any.whl", **sha},
                    {
                        "url": "https://files.example/wrapt-2.0-cp311-cp311-manylinux_2_39_x86_64.whl",
                        **sha,
                    },
                    {
                        "url": "https://files.example/wrapt-2.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                        **sha,
                    },
                    {
                        "url": "https://files.example/wrapt-2.0-cp38-abi3-manylinux_2_34_x86_64.whl",
                        **sha,
                    },
                ],
            },
            {
                "name": "toy",
                "version": "1.0",
                "archive": {"path": "built/toy-1.0-py3-none-any.whl", **sha},
            },
        ]
    }
    wrapt, toy = wheelhouse.pick_wheels(lock, spec, tmp_path)
    # cp311 before abi3 before pure; a newer glibc than the guest's is no fit at all.
    assert (
        wrapt.name == "wrapt"
        and wrapt.filename == "wrapt-2.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    assert toy.url == (tmp_path / "built" / "toy-1.0-py3-none-any.whl").as_uri()
    lock["packages"] = [
        {
            "name": "x",
            "version": "1",
            "wheels": [{"url": "https://f/x-1-cp311-cp311-manylinux_2_39_x86_64.whl", **sha}],
        }
    ]
    with pytest.raises(
        BuildError,
        match=r"uv locked x 1 with no wheel for CPython 3\.11 manylinux \(glibc <= 2\.36\)",
    ):
        wheelhouse.pick_wheels(lock, spec, tmp_path)
    lock["packages"] = [
        {"name": "x", "version": "1", "wheels": [{"url": "https://f/x-1-py3-none-any.whl"}]}
    ]
    with pytest.raises(
        BuildError, match=r"the index published no sha256 for x-1-py3-none-any\.whl"
    ):
        wheelhouse.pick_wheels(lock, spec, tmp_path)


def test_uv_platform_names_the_guests_glibc() -> None:
    assert wheelhouse.uv_platform("2.36", "x86_64") == "x86_64-manylinux_2_36"
    assert wheelhouse.uv_platform("2.39", "aarch64") == "aarch64-manylinux_2_39"
    # trixie's 2.41 is newer than uv names: the newest it does, a subset of what the guest runs
    assert wheelhouse.uv_platform("2.41", "x86_64") == "x86_64-manylinux_2_40"
    with pytest.raises(UsageError):
        wheelhouse.uv_platform("3.1", "x86_64")


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


def test_two_layouts_of_one_wheelhouse_write_the_same_bytecode(
    toy_house: Wheelhouse, tmp_path: Path
) -> None:
    """Checked-hash .pyc: nothing in them depends on when the build unpacked the sources, so
    two builds of one agent give the same files (the fast-path image test compares them)."""
    if not venv.host_can_compile(toy_house.python):
        pytest.skip("the host's Python is not the toy wheelhouse's")
    trees = []
    for name in ("a", "b"):
        root = venv.lay_out_venv(toy_house, tmp_path / name, compile_bytecode=True)
        pycs = sorted(root.rglob("*.pyc"))
        assert pycs
        trees.append({p.relative_to(root): p.read_bytes() for p in pycs})
        time.sleep(1.1)  # a second later: a timestamp .pyc would differ
    assert trees[0] == trees[1]


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


def test_pip_failures_are_one_line() -> None:
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
