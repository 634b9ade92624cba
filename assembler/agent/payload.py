"""What the agent steps upload, prepared on the host before the appliance starts.

Python packaging never runs inside the image (no index is reachable from it, and Python under
emulation is slow): the wheelhouse is resolved and downloaded here for the guest's Python, the
venv laid out here, and the steps then upload it in one tar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from assembler.agent.venv import (
    VENV_PREFIX,
    WHEELS_PREFIX,
    host_can_compile,
    lay_out_venv,
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
from assembler.boottest.guest_facts import MAX_KEY_SCAN_SIZE as MAX_KEY_FILE
from assembler.boottest.guest_facts import PEM_PRIVATE_KEY
from assembler.config import BuildConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentPayload:
    wheelhouse: Wheelhouse
    staging: Path  # stands for the guest's /
    subtrees: tuple[PurePosixPath, ...]  # what to upload from it
    dev_mode: bool
    removed_keys: tuple[str, ...] = ()

    def manifest(self) -> dict[str, object]:
        return {
            **self.wheelhouse.manifest(),
            "mode": "dev" if self.dev_mode else "production",
            "venv": str(VENV_PREFIX),
            # Dev mode runs trove from the controller's checkout; only its requirements are baked.
            "baked": not self.dev_mode,
            "removed_test_keys": list(self.removed_keys),
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
    # Byte-compiled here when the host's Python matches the guest's: the first agent start
    # under emulation then skips compiling ~10,000 modules.
    lay_out_venv(
        wheelhouse,
        staging,
        include_agent=not cfg.dev_mode,
        compile_bytecode=host_can_compile(wheelhouse.python),
    )
    removed = strip_private_keys(staging)
    subtrees = [VENV_PREFIX]
    if cfg.dev_mode:
        stage_wheelhouse(wheelhouse, staging)
        subtrees.append(WHEELS_PREFIX)
    log.info("agent %s for Python %s ready to upload", wheelhouse.agent_source, wheelhouse.python)
    return AgentPayload(wheelhouse, staging, tuple(subtrees), cfg.dev_mode, tuple(removed))


def strip_private_keys(staging: Path) -> list[str]:
    """Remove the private keys some distributions ship as test fixtures (novaclient,
    glanceclient, oslo.service...): no private key may reach a production image, and no code
    path of the agent reads them. Returns their guest paths, for the manifest."""
    removed = []
    for path in sorted(staging.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_KEY_FILE:
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY-----" in data and PEM_PRIVATE_KEY.search(data):
            path.unlink()
            removed.append("/" + str(path.relative_to(staging)))
    if removed:
        log.info("removed %d private keys shipped as test fixtures: %s", len(removed), removed)
    return removed
