"""What the agent steps upload, prepared on the host before the appliance starts.

Python packaging never runs inside the image (no index is reachable from it, and Python under
emulation is slow): the wheelhouse is resolved and downloaded here for the guest's Python, the
venv laid out here, and the steps then upload it in one tar.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from assembler import keyscan
from assembler.agent.slim import Slimmed, prune_records, slim_venv
from assembler.agent.venv import (
    STEP,
    VENV_PREFIX,
    WHEELS_PREFIX,
    compile_venv,
    host_can_compile,
    host_path,
    lay_out_venv,
    site_packages,
    stage_wheelhouse,
)
from assembler.agent.versions import default_agent_version
from assembler.agent.wheelhouse import (
    LocalAgent,
    PypiAgent,
    Wheelhouse,
    WheelhouseSpec,
    build_wheelhouse,
    check_agent_source,
)
from assembler.config import BuildConfig
from assembler.errors import BuildError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentPayload:
    wheelhouse: Wheelhouse
    staging: Path  # stands for the guest's /
    subtrees: tuple[PurePosixPath, ...]  # what to upload from it
    dev_mode: bool
    removed_keys: tuple[str, ...] = ()
    slimmed: Slimmed | None = None

    def manifest(self) -> dict[str, object]:
        return {
            **self.wheelhouse.manifest(),
            "mode": "dev" if self.dev_mode else "production",
            "venv": str(VENV_PREFIX),
            # Dev mode runs trove from the controller's checkout; only its requirements are baked.
            "baked": not self.dev_mode,
            "removed_test_keys": list(self.removed_keys),
            **({"slimmed": self.slimmed.manifest()} if self.slimmed else {}),
        }


def agent_spec(cfg: BuildConfig) -> WheelhouseSpec:
    agent = cfg.agent
    source: PypiAgent | LocalAgent
    if agent.source is not None:
        source = LocalAgent(agent.source)
    else:
        source = PypiAgent(agent.version or default_agent_version(cfg.release))
    return WheelhouseSpec.for_release(cfg.release, source, agent.constraints)


def check_agent(cfg: BuildConfig) -> None:
    """Before any image work: a version the guest's Python cannot run is a one-line error."""
    spec = agent_spec(cfg)
    check_agent_source(spec.agent, spec.python)


def agent_wheelhouse(cfg: BuildConfig) -> Wheelhouse:
    """The agent's wheels (cached by their inputs): what identifies the agent in a layer key."""
    return build_wheelhouse(agent_spec(cfg))


def prepare_agent(cfg: BuildConfig, workdir: Path, wheelhouse: Wheelhouse) -> AgentPayload:
    """Lay out the venv for `wheelhouse` (from agent_wheelhouse) under workdir, to upload."""
    staging = workdir / "agent-root"
    staging.mkdir()
    lay_out_venv(wheelhouse, staging, include_agent=not cfg.dev_mode)
    # Keys first: the promise holds whatever the slimming rules, and the manifest names them.
    removed = strip_private_keys(staging)
    site = site_packages(VENV_PREFIX, wheelhouse.python)
    # What was stripped leaves its distribution's RECORD too, as what slimming removes does.
    gone = [PurePosixPath(p) for p in removed]
    prune_records(
        host_path(staging, site), [str(p.relative_to(site)) for p in gone if p.is_relative_to(site)]
    )
    slimmed = slim_venv(host_path(staging, site))
    # Byte-compiled here when the host's Python matches the guest's: the first agent start
    # under emulation then skips compiling ~10,000 modules. After slimming, so no test suite
    # is compiled to be thrown away; then scanned again, since bytecode joins what the source
    # split (a key in adjacent string literals is one constant in the .pyc).
    if host_can_compile(wheelhouse.python):
        compile_venv(staging, VENV_PREFIX, wheelhouse.python)
        removed += strip_private_keys(staging)
    subtrees = [VENV_PREFIX]
    if cfg.dev_mode:
        stage_wheelhouse(wheelhouse, staging)
        subtrees.append(WHEELS_PREFIX)
    log.info("agent %s for Python %s ready to upload", wheelhouse.agent_source, wheelhouse.python)
    return AgentPayload(wheelhouse, staging, tuple(subtrees), cfg.dev_mode, tuple(removed), slimmed)


# Where distributions keep their tests and fixtures: nothing the agent runs reads them.
TEST_DIRS = frozenset({"tests", "test", "testing"})


def is_test_file(path: PurePosixPath) -> bool:
    """Whether a path belongs to a test suite: under a tests directory, or a test module (or
    its bytecode, which __pycache__ names after it)."""
    module = path.name.split(".", 1)[0]
    return (
        any(part in TEST_DIRS for part in path.parent.parts)
        or module.startswith("test_")
        or module.endswith("_test")
        or module == "conftest"
    )


def is_code(path: PurePosixPath) -> bool:
    """Whether Python imports or loads it: a module, its bytecode, a shared library."""
    return path.suffix in (".py", ".pyc") or ".so" in path.suffixes


def strip_private_keys(staging: Path) -> list[str]:
    """Remove every staged file that holds a private key (assembler/keyscan.py, the detector
    the boot check runs in the guest), whatever its size: no private key may reach a
    production image. Some distributions ship them as test fixtures (novaclient, glanceclient,
    oslo.service) or in test modules (keystonemiddleware); no code path of the agent reads
    those. Returns their guest paths, for the manifest.

    A key in importable code outside any test suite is not removed: that could break an import,
    and blanking the key would break whatever uses it. The build fails and names the files.
    """
    found: list[tuple[PurePosixPath, keyscan.Finding]] = []
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            finding = keyscan.scan_file(str(path))
            if finding is not None:
                found.append((PurePosixPath("/") / path.relative_to(staging).as_posix(), finding))
    kept = [f"{p} ({f.kind})" for p, f in found if is_code(p) and not is_test_file(p)]
    if kept:
        raise BuildError(
            STEP,
            "a private key in importable code, not a test suite: " + ", ".join(kept)
            + "; removing it could break the agent, so the build stops (pin another release "
            "of that package, or report the key to it)",
        )  # fmt: skip
    for guest_path, _ in found:
        (staging / guest_path.relative_to("/")).unlink()
    removed = sorted(str(p) for p, _ in found)
    if removed:
        log.info("removed %d files holding private keys: %s", len(removed), removed)
    return removed
