"""The live view as a user sees it: a build run in a real terminal (tmux), the screen read
back. Off a terminal the same build prints plain lines (every other test reads those)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builds import Built

pytestmark = pytest.mark.image


def test_a_build_on_a_terminal_shows_its_stages_and_where_the_time_went(
    raw_production: Built, tmp_path: Path
) -> None:
    out = tmp_path / "again.raw"  # raw_production's layers and output, all in the caches
    env = {
        "ASSEMBLER_ACCEL": "tcg",
        "ASSEMBLER_LAYER_CACHE": os.environ["ASSEMBLER_LAYER_CACHE"],
        "PYTHONPATH": os.pathsep.join(sys.path),
        **raw_production.env,
    }
    command = shlex.join(
        ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "assembler",
         *raw_production.args_to(out)]
    )  # fmt: skip
    script = tmp_path / "run.sh"
    script.write_text(f"{command}\necho rc=$?\nsleep 600\n")
    server = ["tmux", "-L", f"assembler-view-{os.getpid()}"]
    subprocess.run(
        [*server, "new-session", "-d", "-x", "110", "-y", "45", "bash", str(script)], check=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            screen = subprocess.run(
                [*server, "capture-pane", "-p", "-J"], capture_output=True, text=True, check=True
            ).stdout
            if "rc=" in screen or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        subprocess.run([*server, "kill-server"], check=False)
    assert "rc=0" in screen, screen
    lines = screen.splitlines()
    for stage in ("system layer", "config layer", "agent layer"):
        assert any(stage in line and "cached" in line for line in lines), screen
    assert any("raw output" in line for line in lines), screen
    assert "where the time went" in screen and any(
        line.split()[:1] == ["total"] for line in lines
    ), screen
    assert not any(line.startswith("step ") for line in lines), screen  # no plain step lines
    assert out.exists()
