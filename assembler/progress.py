"""What a build shows while it runs: on a terminal, a live view drawn by rich; anywhere else
(CI logs, a pipe, a file), the plain log lines it has always printed.

Code reports through the functions here and never draws: `stage()` around a layer or the
convert, `step()` for each step in it, `transfer()` for a download. The CLI calls
`use_terminal()` when stderr is a terminal; `summary()` prints where the time went.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One layer (or the convert) as the view shows it."""

    name: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    cached: bool = False
    failed: bool = False
    step: str | None = None
    step_started: float = 0.0
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class View:
    """The live view: a row per stage (a spinner and the running step, or how it ended), the
    download bars under them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.stages: list[Stage] = []
        self.lock = threading.Lock()
        self.bars = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.spinner = Spinner("dots")
        self.live = Live(console=console, refresh_per_second=8, get_renderable=self.render)

    def render(self) -> RenderableType:
        table = Table.grid(padding=(0, 1))
        table.add_column(width=2)
        table.add_column(min_width=16)
        table.add_column(min_width=10)
        table.add_column(justify="right", min_width=8)
        with self.lock:
            stages = list(self.stages)
        now = time.monotonic()
        for s in stages:
            if s.ended is None:
                doing = Text(s.step or "starting", style="cyan")
                if s.step:
                    doing.append(f" {now - s.step_started:.0f} s", style="dim")
                mark: RenderableType = self.spinner
            elif s.failed:
                mark, doing = Text("✗", style="red"), Text("failed", style="red")
            elif s.cached:
                mark, doing = Text("✓", style="green"), Text("cached", style="dim")
            else:
                done = f"built, {len(s.steps)} steps" if s.steps else "done"
                mark, doing = Text("✓", style="green"), Text(done)
            table.add_row(mark, Text(s.name, style="bold"), doing, f"{s.seconds:.1f} s")
        return Group(table, self.bars)


_view: View | None = None
_saved_handlers: list[logging.Handler] = []


def use_terminal(console: Console | None = None) -> None:
    """Show the live view on `console` (stderr) from now on; log records print above it."""
    global _view
    console = console or Console(stderr=True)
    _view = View(console)
    root = logging.getLogger()
    _saved_handlers[:] = root.handlers
    for handler in _saved_handlers:
        root.removeHandler(handler)
    handler = RichHandler(
        console=console, show_time=False, show_path=False, show_level=False, markup=False
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    _view.live.start()


def stop() -> None:
    """Leave the live view as last drawn, and log as plain lines again."""
    global _view
    if _view is None:
        return
    _view.live.stop()
    _view = None
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in _saved_handlers:
        root.addHandler(handler)
    _saved_handlers.clear()


def active() -> bool:
    return _view is not None


@contextmanager
def stage(name: str) -> Iterator[Stage]:
    """A layer or the convert, running for the time of the block; set `.cached` when it came
    from a cache."""
    shown = Stage(name)
    if _view is not None:
        with _view.lock:
            _view.stages.append(shown)
    try:
        yield shown
    except BaseException:
        shown.failed = True
        raise
    finally:
        shown.ended = time.monotonic()
        if _view is None and not shown.cached and not shown.failed:
            log.info("%s: done in %.1f s", name, shown.seconds)


def _running() -> Stage | None:
    if _view is None:
        return None
    with _view.lock:
        return next((s for s in reversed(_view.stages) if s.ended is None), None)


def step_started(name: str) -> None:
    current = _running()
    if current is None:
        log.info("step %s", name)
        return
    current.step, current.step_started = name, time.monotonic()


def step_done(name: str, seconds: float) -> None:
    current = _running()
    if current is None:
        log.info("step %s done in %.1f s", name, seconds)
        return
    current.steps.append((name, seconds))
    current.step = None


class Bar:
    """A download's bar on the live view."""

    def __init__(self, view: View, task: TaskID) -> None:
        self.view, self.task = view, task

    def advance(self, n: int) -> None:
        self.view.bars.advance(self.task, n)

    def close(self) -> None:
        self.view.bars.remove_task(self.task)


def bar(label: str, total: int | None, done: int) -> Bar | None:
    """A bar on the live view, or None when there is none (then the caller logs lines)."""
    if _view is None:
        return None
    return Bar(_view, _view.bars.add_task(label, total=total, completed=done))


def summary(layers: list[dict[str, Any]], convert_seconds: float | None) -> Table:
    """Where the time went: each layer (cached, or its slowest steps) and the convert."""
    table = Table(title="where the time went", box=box.SIMPLE, title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("slowest steps")
    total = 0.0
    for layer in layers:
        steps = [(s["name"], float(s["seconds"])) for s in layer.get("steps", [])]
        seconds = sum(sec for _, sec in steps)
        total += seconds
        slowest = sorted(steps, key=lambda s: -s[1])[:3]
        detail = "cached" if layer.get("cached") else ", ".join(f"{n} {s:.1f}" for n, s in slowest)
        table.add_row(layer["name"], f"{seconds:.1f}", detail)
    if convert_seconds is not None:
        total += convert_seconds
        table.add_row("convert", f"{convert_seconds:.1f}", "")
    table.add_row("total", f"{total:.1f}", "", style="bold")
    return table


def print_summary(layers: list[dict[str, Any]], convert_seconds: float | None) -> None:
    """The summary table on the terminal, or as plain text lines elsewhere."""
    table = summary(layers, convert_seconds)
    if _view is not None:
        console = _view.console
        stop()
        console.print(table)
        return
    Console(stderr=True, no_color=True, width=100).print(table)
