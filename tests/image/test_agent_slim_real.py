"""The real agent venv (the machine's cached bookworm wheelhouse), slimmed as the build slims it,
run with its own Python: all of trove's agent code still imports, every datastore manager
included, and no test suite is left. ~40 s."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest

from assembler.agent.slim import KEEP_SUFFIX, SLIM_DIRS, slim_venv
from assembler.agent.venv import lay_out_venv, site_packages, tar_tree
from assembler.agent.wheelhouse import WheelhouseSpec, build_wheelhouse
from assembler.distros import RELEASES
from tests.image.test_agent_venv_real import same_python_as_bookworm

pytestmark = [pytest.mark.image, same_python_as_bookworm]

# Run by the venv's python: every module under trove.guestagent, the managers trove's registry
# names, trove's entry points (wsgi_scripts build a service app at load: not the agent's) and
# whether every file importlib.metadata lists is there.
PROBE = """
import importlib, json, pkgutil, warnings
from importlib import metadata
warnings.simplefilter("ignore")
import trove.guestagent
from trove.common import constants
failed = {}
names = [m.name for m in pkgutil.walk_packages(trove.guestagent.__path__, "trove.guestagent.")]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
for datastore, path in constants.REGISTRY_EXT_DEFAULTS.items():
    module, _, cls = path.rpartition(".")
    try:
        getattr(importlib.import_module(module), cls)
    except Exception as exc:
        failed[datastore] = repr(exc)
eps = [ep for ep in metadata.distribution("trove").entry_points if ep.group != "wsgi_scripts"]
for ep in eps:
    try:
        ep.load()
    except Exception as exc:
        failed[ep.group + ":" + ep.name] = repr(exc)
missing = [str(f) for d in metadata.distributions() for f in d.files or () if not f.locate().exists()]
print(json.dumps({"modules": names, "registry": sorted(constants.REGISTRY_EXT_DEFAULTS),
                  "entry_points": [ep.name for ep in eps], "failed": failed, "missing": missing}))
"""


def _measure(root: Path, tmp: Path) -> tuple[int, int, int]:
    files = sum(len(f) for _, _, f in os.walk(root))
    size = sum(os.lstat(os.path.join(d, n)).st_size for d, _, fs in os.walk(root) for n in fs)
    tar = tar_tree(Path("/"), tmp / "venv.tar", [PurePosixPath(root)], uid=0, gid=0)
    packed = tar.stat().st_size
    tar.unlink()
    return files, size, packed


def test_the_slimmed_venv_runs_every_datastore_manager(tmp_path: Path) -> None:
    house = build_wheelhouse(WheelhouseSpec.for_release(RELEASES["bookworm"]))
    prefix = PurePosixPath(tmp_path / "guest-agent-venv")
    root = lay_out_venv(house, Path("/"), prefix, compile_bytecode=True)
    site = Path(site_packages(prefix, house.python))
    before = _measure(root, tmp_path)
    started = time.monotonic()
    slimmed = slim_venv(site)
    seconds = time.monotonic() - started
    after = _measure(root, tmp_path)
    print(
        f"\nslimmed in {seconds:.1f} s: {len(slimmed.dirs)} dirs; files {before[0]} -> {after[0]}, "
        f"MiB {before[1] / 2**20:.1f} -> {after[1] / 2**20:.1f}, "
        f"tar MiB {before[2] / 2**20:.1f} -> {after[2] / 2**20:.1f}"
    )
    assert before[0] - after[0] == slimmed.files and "trove/tests" in slimmed.dirs
    names = {name for name, _ in SLIM_DIRS}
    left = []
    for d, dirs, _ in os.walk(site):
        if d.endswith(KEEP_SUFFIX):
            dirs.clear()
        left += [os.path.join(d, n) for n in dirs if n in names]
    assert left == []

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [root / "bin" / "python3", "-c", PROBE],
        capture_output=True, text=True, env=env, check=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["failed"] == {} and report["missing"] == []
    modules = set(report["modules"])
    for datastore in ("mysql", "mariadb", "postgres", "mysql_common"):
        assert f"trove.guestagent.datastore.{datastore}.manager" in modules
    assert set(report["registry"]) >= {"mysql", "mariadb", "postgresql"}
    assert "trove-guestagent" in report["entry_points"]
