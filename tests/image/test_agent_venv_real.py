"""The real agent environment: trove's wheelhouse downloaded from PyPI, the venv laid out on the
host and run where the host's Python is the guest's (bookworm's 3.11 here).

Each wheelhouse is downloaded once for the module, into a private cache (uv's and pip's own caches
too, as they live under XDG_CACHE_HOME), so this measures and checks real downloads; ~10-20 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from packaging import tags
from packaging.utils import parse_wheel_filename

from assembler.agent import venv, versions
from assembler.agent.venv import lay_out_venv, stage_wheelhouse, tar_tree
from assembler.agent.wheelhouse import (
    LocalAgent,
    Wheelhouse,
    WheelhouseSpec,
    build_wheelhouse,
    manylinux_platforms,
)
from assembler.distros import RELEASES
from assembler.errors import UsageError

pytestmark = pytest.mark.image

HOST_PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
same_python_as_bookworm = pytest.mark.skipif(
    RELEASES["bookworm"].python != HOST_PY or not Path(f"/usr/bin/python{HOST_PY}").exists(),
    reason="runs the venv with the host's Python, which must be bookworm's",
)


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache for this module only (other image tests keep the machine's base cache)."""
    home = tmp_path_factory.mktemp("agent-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def bookworm_house(cache_home: Path) -> tuple[Wheelhouse, float]:
    started = time.monotonic()
    house = build_wheelhouse(WheelhouseSpec.for_release(RELEASES["bookworm"]))
    return house, time.monotonic() - started


@pytest.fixture(scope="module")
def jammy_house(cache_home: Path) -> Wheelhouse:
    return build_wheelhouse(WheelhouseSpec.for_release(RELEASES["jammy"]))


def _fits(wheel_name: str, python: str, glibc: str) -> bool:
    """Whether a wheel installs on CPython `python` with that glibc (packaging's own tag list)."""
    version = tuple(int(p) for p in python.split("."))
    platforms = list(manylinux_platforms(glibc, "x86_64"))
    supported = {
        *tags.cpython_tags(version, platforms=platforms),
        *tags.compatible_tags(version, f"cp{python.replace('.', '')}", platforms),
    }
    return bool(parse_wheel_filename(wheel_name)[3] & supported)


def test_bookworm_wheelhouse(bookworm_house: tuple[Wheelhouse, float]) -> None:
    house, seconds = bookworm_house
    print(
        f"\ntrove {house.agent_version} for 3.11: {len(house.wheels)} wheels, {house.size / 2**20:.1f} MiB, {seconds:.1f} s"
    )
    assert house.agent_version == "26.0.0"
    assert 110 <= len(house.wheels) <= 150  # 127 in November 2026 (126 + pip)
    names = {w.name for w in house.wheels}
    assert {"trove", "oslo-messaging", "pip", "cryptography"} <= names
    assert "tomli" not in names  # needed below 3.11 only
    for wheel in house.wheels:
        assert _fits(wheel.path.name, "3.11", "2.36"), wheel.path.name
    again_started = time.monotonic()
    assert build_wheelhouse(WheelhouseSpec.for_release(RELEASES["bookworm"])) == house
    assert time.monotonic() - again_started < 5  # the cache answers, no pip
    assert house.manifest()["wheels"][house.agent_wheel.path.name] == house.agent_wheel.sha256


def test_requires_python_is_verified_and_cached(
    bookworm_house: tuple[Wheelhouse, float], jammy_house: Wheelhouse
) -> None:
    # Recorded from the downloaded wheels' METADATA and PyPI's JSON: no request needed now.
    assert versions.requires_python("26.0.0") == ">=3.11"
    assert versions.requires_python("25.1.0") == ">=3.10"
    with pytest.raises(UsageError, match=r"requires Python >=3\.11 but the guest has Python 3\.10"):
        versions.check_agent_version("26.0.0", RELEASES["jammy"].python)
    started = time.monotonic()
    versions.check_agent_version("26.0.0", RELEASES["noble"].python)
    assert time.monotonic() - started < 0.5


def test_jammy_wheelhouse_resolves_for_python_310(jammy_house: Wheelhouse) -> None:
    assert jammy_house.agent_version == "25.1.0" and jammy_house.python == "3.10"
    names = {w.name for w in jammy_house.wheels}
    # Required only below 3.11: pip running on 3.11 skips them; the guest's markers add them.
    assert {"tomli", "backports-strenum"} <= names
    for wheel in jammy_house.wheels:
        assert _fits(wheel.path.name, "3.10", "2.35"), wheel.path.name


def test_jammy_venv_tree(jammy_house: Wheelhouse, tmp_path: Path) -> None:
    root = lay_out_venv(jammy_house, tmp_path)
    assert (root / "bin" / "python3").readlink() == Path("/usr/bin/python3.10")
    assert "version = 3.10\n" in (root / "pyvenv.cfg").read_text()
    site = root / "lib" / "python3.10" / "site-packages"
    assert (site / "trove" / "cmd" / "guest.py").is_file()
    assert (
        (root / "bin" / "trove-guestagent")
        .read_text()
        .startswith("#!/opt/guest-agent-venv/bin/python3\n")
    )
    if HOST_PY != "3.10":
        with pytest.raises(UsageError, match="cannot byte-compile"):
            lay_out_venv(jammy_house, tmp_path / "other", compile_bytecode=True)


@same_python_as_bookworm
def test_bookworm_venv_runs_the_agent(
    bookworm_house: tuple[Wheelhouse, float], tmp_path: Path
) -> None:
    house, _ = bookworm_house
    prefix = PurePosixPath(tmp_path / "guest-agent-venv")
    started = time.monotonic()
    root = lay_out_venv(house, Path("/"), prefix)
    print(f"\nlaid out in {time.monotonic() - started:.1f} s")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    probe = "import sys, trove.cmd.guest, oslo_messaging; print(sys.prefix)"
    out = subprocess.run(
        [root / "bin" / "python3", "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == str(prefix)
    helped = subprocess.run(
        [root / "bin" / "trove-guestagent", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "--config-dir" in helped.stdout
    assert (root / "bin" / "trove-guestagent").read_text().startswith(f"#!{prefix}/bin/python3\n")
    pip = subprocess.run(
        [root / "bin" / "pip", "--version"], capture_output=True, text=True, env=env, check=True
    )
    assert str(prefix) in pip.stdout


@same_python_as_bookworm
def test_dev_venv_installs_the_agent_offline(
    bookworm_house: tuple[Wheelhouse, float], tmp_path: Path
) -> None:
    """Dev mode: the venv without trove, and the baked wheelhouse pip installs from offline."""
    house, _ = bookworm_house
    root = lay_out_venv(house, Path("/"), PurePosixPath(tmp_path / "venv"), include_agent=False)
    site = root / "lib" / "python3.11" / "site-packages"
    assert not (site / "trove").exists() and (site / "oslo_messaging").is_dir()
    wheels = stage_wheelhouse(
        house, Path("/"), PurePosixPath(tmp_path / "wheels"), include_agent=True
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [root / "bin" / "pip", "install", "--no-index", "--find-links", wheels, "-c", wheels / "constraints.txt", "trove"],
        capture_output=True, text=True, env=env, check=True, timeout=300,
    )  # fmt: skip
    subprocess.run([root / "bin" / "python3", "-c", "import trove.cmd.guest"], env=env, check=True)


def test_local_source_with_an_sdist_only_dependency(cache_home: Path, tmp_path: Path) -> None:
    """--agent-source PATH: built on the host; docopt has only an sdist (pure Python: built
    here too); the constraints pin it per Python version, evaluated for the guest's 3.10."""
    src = tmp_path / "toy-agent"
    (src / "toy_agent").mkdir(parents=True)
    (src / "toy_agent" / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "toy-agent"\nversion = "1.0"\nrequires-python = ">=3.8"\ndependencies = ["docopt"]\n'
    )
    constraints = tmp_path / "upper-constraints.txt"
    constraints.write_text(
        "docopt===0.6.1;python_version=='3.10'\ndocopt===0.6.2;python_version>='3.11'\n"
    )
    spec = WheelhouseSpec(LocalAgent(src), "3.10", "2.35", str(constraints), tools=())
    house = build_wheelhouse(spec)
    assert sorted(w.path.name for w in house.wheels) == [
        "docopt-0.6.1-py3-none-any.whl",
        "toy_agent-1.0-py3-none-any.whl",
    ]
    assert house.agent_name == "toy-agent" and house.agent_source == str(src)
    assert build_wheelhouse(spec) == house  # the tree's content hash finds it again


@same_python_as_bookworm
def test_tar_of_the_compiled_venv(bookworm_house: tuple[Wheelhouse, float], tmp_path: Path) -> None:
    """The venv at the guest's path, byte-compiled, packed. .pyc files are checked against
    their source's mtime and size: GNU tar (what tar_in runs) must restore both, so that the
    guest's first agent start reads them instead of compiling."""
    house, _ = bookworm_house
    staging = tmp_path / "staging"
    started = time.monotonic()
    lay_out_venv(house, staging, compile_bytecode=True)
    print(f"\nlaid out with bytecode in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    tar_path = tar_tree(staging, tmp_path / "agent.tar", [venv.VENV_PREFIX], uid=os.getuid(), gid=0)
    print(f"tar: {tar_path.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s")
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    assert members[0].name == "opt/guest-agent-venv"
    assert all(m.name.startswith("opt/guest-agent-venv") for m in members)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(os.getuid(), 0, "", "")}
    names = {m.name for m in members}
    assert "opt/guest-agent-venv/lib/python3.11/site-packages/trove/cmd/guest.py" in names

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-C", unpacked, "-xf", tar_path], check=True)
    python3 = unpacked / "opt" / "guest-agent-venv" / "bin" / "python3"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [python3, "-v", "-c", "import trove.common.cfg"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert re.search(
        r"trove/common/__pycache__/cfg\.cpython-311\.pyc matches .*trove/common/cfg\.py", out.stderr
    )
