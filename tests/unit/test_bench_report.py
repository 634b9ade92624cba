"""`make bench`'s report and table from a run's records: every case, floor and target present
(a typo here would surface only at the end of a 40-minute run)."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.__main__ import TARGETS, floors, report, table


def steps(**seconds: float) -> list[dict[str, Any]]:
    return [{"name": k.replace("_", "-"), "seconds": v} for k, v in seconds.items()]


def runs() -> dict[str, list[dict[str, Any]]]:
    cold = steps(launch=11, packages=40, agent_venv=12, convert=14)
    agent = steps(launch=11, agent_venv=12, convert=14)
    return {
        "cold": [{"seconds": 100, "steps": cold, "launches": 3}],
        "cold warm-packages": [{"seconds": 90, "steps": cold, "launches": 3}],
        "agent-only": [{"seconds": 40, "steps": agent, "launches": 1}],
        "agent-only plain": [{"seconds": 30, "steps": agent, "launches": 1}],
        "agent-only embedded": [{"seconds": 45, "steps": agent, "launches": 1}],
        "unchanged": [{"seconds": 3, "steps": [], "launches": 0}],
        "copy": [{"seconds": 1.0}],
        "peer": [{"seconds": 300, "phases": {}}],
        "peer defaults": [{"seconds": 400, "phases": {}}],
    }


SIZES = {"base": 500, "ours": 400, "ours plain": 1100, "peer": 570, "peer plain": 1400}


def test_floors_come_from_the_profile() -> None:
    f = floors(runs())
    assert f["cold"] == 11 + 40 + 12 + 14
    assert f["unchanged"] == 1.0
    assert 11 + 12 < f["agent-only"] < 11 + 12 + 14


def test_the_table_shows_both_peers_the_floors_and_every_target() -> None:
    result = report(runs(), SIZES, argparse.Namespace(repeat=1, peer_runs=1))
    text = table(result)
    assert "its own defaults" in text and "--smp 2 --memsize 2048" in text
    assert "| ours: cold (our caches empty but base and wheels) | 100 | 100 | 0.333 | 77 |" in text
    assert len(result["targets"]) == len(TARGETS)
    for what, _, limit in TARGETS:
        assert f"| {what} <= {limit} |" in text
    assert result["ratios"]["unchanged beyond copy s"] == 2.0
