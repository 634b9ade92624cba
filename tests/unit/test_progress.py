"""The build's live view on a terminal, its plain lines elsewhere, and the summary table."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from rich.console import Console

from assembler import progress


@pytest.fixture
def screen() -> Iterator[io.StringIO]:
    out = io.StringIO()
    progress.use_terminal(Console(file=out, force_terminal=True, width=100, color_system=None))
    try:
        yield out
    finally:
        progress.stop()


def drawn() -> str:
    assert progress._view is not None
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(progress._view.render())
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_the_view_shows_each_stage_and_its_running_step(screen: io.StringIO) -> None:
    with progress.stage("system layer") as system:
        system.cached = True
    with progress.stage("config layer"):
        progress.step_started("guest-user")
        progress.step_done("guest-user", 0.5)
        progress.step_started("hygiene")
        text = drawn()
        assert "config layer" in text and "hygiene" in text
        progress.step_done("hygiene", 1.0)
    with progress.stage("raw output"):
        pass
    with pytest.raises(RuntimeError), progress.stage("agent layer"):
        raise RuntimeError("boom")
    lines = drawn().splitlines()
    assert any("system layer" in line and "cached" in line for line in lines)
    assert any("config layer" in line and "built, 2 steps" in line for line in lines)
    assert any("agent layer" in line and "failed" in line for line in lines)
    assert any("raw output" in line and "done" in line for line in lines)  # a stage of no steps


def test_log_records_print_above_the_view(screen: io.StringIO) -> None:
    logging.getLogger("assembler.test").warning("a message for the user")
    assert "a message for the user" in screen.getvalue()


def test_elsewhere_steps_are_plain_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="assembler.progress")
    assert not progress.active()
    with progress.stage("config layer"):
        progress.step_started("guest-user")
        progress.step_done("guest-user", 0.25)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["step guest-user", "step guest-user done in 0.2 s"]
    assert messages[2].startswith("config layer: done in ")


def test_the_summary_says_where_the_time_went() -> None:
    layers = [
        {"name": "system", "cached": True, "steps": []},
        {
            "name": "agent",
            "cached": False,
            "steps": [
                {"name": "launch", "seconds": 11.0},
                {"name": "agent-venv", "seconds": 30.5},
                {"name": "trim", "seconds": 1.0},
                {"name": "mount", "seconds": 0.1},
            ],
        },
    ]
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(progress.summary(layers, 4.0))
    assert isinstance(console.file, io.StringIO)
    rows = [line.split() for line in console.file.getvalue().splitlines() if line.strip()]
    assert ["system", "0.0", "cached"] in rows
    assert ["agent", "42.6", "agent-venv", "30.5,", "launch", "11.0,", "trim", "1.0"] in rows
    assert ["convert", "4.0"] in rows and ["total", "46.6"] in rows
