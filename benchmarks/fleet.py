"""The fleet's cases of `make bench` (issue 15), measured against a cold build of the same run.

- registry-warm: a runner with empty caches of layers, host packages and bases (it keeps only
  the agent's wheels, as every cold build here does) builds an image another runner pushed:
  it pulls the base and every layer, and converts.
- matrix: four cells (production and dev, qcow2 and raw, one release) on two workers, each a
  runner of its own (own caches, as a cold build's), sharing one registry, stage by stage as
  `assembler matrix` plans them; its wall time.

The registry is docker-registry on 127.0.0.1, run by the bench (never Debian's service).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from assembler.boottest.registry import Registry

SIZE = "5G"
FOUR_CELLS = """guest-os = "debian"
releases = ["bookworm"]
modes = ["production", "dev"]
formats = ["qcow2", "raw"]
output-dir = "{out}"
cache-registry = "{where}"
args = ["--base", "archive", "--size", "{size}"]
"""


def runner_caches(xdg: Path, keep: tuple[str, ...]) -> dict[str, str]:
    """A runner's own caches: empty but for `keep` (linked from this machine's)."""
    from assembler.paths import cache_dir

    mine = cache_dir()
    ours = xdg / "trove-image-assembler"
    ours.mkdir(parents=True)
    for name in keep:
        if (mine / name).exists():
            (ours / name).symlink_to(mine / name)
    return {"XDG_CACHE_HOME": str(xdg), "ASSEMBLER_LAYER_CACHE": str(xdg / "layers")}


def _assembler(*args: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "assembler", *args],
        capture_output=True, text=True, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"error: assembler {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - started, proc.stderr


def _build(out: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    seconds, stderr = _assembler(
        "--guest-os", "debian", "--release", "bookworm", "--no-dev-mode", "--base", "archive",
        "--size", SIZE, "-o", str(out), *extra, env=env,
    )  # fmt: skip
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    pushed = [line for line in stderr.splitlines() if line.startswith("registry push: done in")]
    return {
        "seconds": seconds,
        "push_seconds": float(pushed[0].split()[-2]) if pushed else 0.0,
        "launches": stderr.count("launching the libguestfs appliance"),
        "layers": {x["name"]: x["from"] for x in manifest["layers"]},
    }


def run(work: Path, log: Any) -> dict[str, list[dict[str, Any]]]:
    """Returns runs by case: "fleet cold", "registry-warm", "matrix"."""
    runs: dict[str, list[dict[str, Any]]] = {}
    with Registry() as registry:
        where = f"{registry.host}/bench/layers"
        log("fleet: cold build on runner one, pushing to the registry")
        one = runner_caches(work / "runner-1", ("bases", "wheelhouses", "agent"))
        runs["fleet cold"] = [_build(work / "one.qcow2", one, "--cache-registry", where)]
        log("fleet: runner two, empty caches (layers, packages, base), warm registry")
        two = runner_caches(work / "runner-2", ("wheelhouses", "agent"))
        runs["registry-warm"] = [_build(work / "two.qcow2", two, "--cache-registry", where)]
    with Registry() as registry:
        where = f"{registry.host}/bench/matrix"
        out = work / "cells"
        matrix = work / "matrix.toml"
        matrix.write_text(FOUR_CELLS.format(out=out, where=where, size=SIZE))
        plan = json.loads(
            subprocess.run(
                [sys.executable, "-m", "assembler", "matrix", str(matrix), "--json"],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        log(f"fleet: a four-cell matrix on two workers, stages {plan['stages']}")
        workers = [
            runner_caches(work / f"worker-{i}", ("bases", "wheelhouses", "agent")) for i in (1, 2)
        ]
        started = time.monotonic()
        cells: list[dict[str, Any]] = []
        for stage in plan["stages"]:
            ids = stage["cell"]
            # Two workers, each its own runner: a worker takes its cells one after another.
            shares = [ids[0::2], ids[1::2]]

            def work_through(i: int, shares: list[list[str]] = shares) -> list[dict[str, Any]]:
                return [
                    {"cell": c, "worker": i + 1, "seconds": _assembler(
                        "build", "--matrix", str(matrix), "--cell", c, env=workers[i])[0]}
                    for c in shares[i]
                ]  # fmt: skip

            with ThreadPoolExecutor(2) as pool:
                for done in pool.map(work_through, (0, 1)):
                    cells += done
        runs["matrix"] = [{"seconds": time.monotonic() - started, "cells": cells}]
    return runs


# The goals of issue 15: (what, ratio key, at most).
TARGETS = (
    ("a build with empty caches from a warm registry vs a cold build", "registry-warm/cold", 0.2),
    ("a four-cell matrix on two workers (wall) vs a cold build", "matrix/cold", 1.5),
)


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    cold = runs["fleet cold"][0]
    # The cold build's own time: what it spent pushing afterwards is the fleet's gain, not cost.
    alone = cold["seconds"] - cold["push_seconds"]
    return {
        "registry-warm/cold": runs["registry-warm"][0]["seconds"] / alone,
        "matrix/cold": runs["matrix"][0]["seconds"] / alone,
        "push/cold": cold["push_seconds"] / alone,
    }


def targets(found: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {"what": what, "ratio": key, "at_most": limit, "met": found[key] <= limit}
        for what, key, limit in TARGETS
    ]


def table(runs: dict[str, list[dict[str, Any]]], found: dict[str, float]) -> str:
    cold = runs["fleet cold"][0]
    lines = [
        "| fleet case | seconds | ratio to the cold build |",
        "|---|---|---|",
        f"| cold build (runner one; its push after it: {cold['push_seconds']:.0f} s) | "
        f"{cold['seconds'] - cold['push_seconds']:.0f} | 1.00 |",
        f"| empty caches, warm registry (runner two) | {runs['registry-warm'][0]['seconds']:.0f} "
        f"| {found['registry-warm/cold']:.2f} |",
        f"| four cells on two workers, wall | {runs['matrix'][0]['seconds']:.0f} | "
        f"{found['matrix/cold']:.2f} |",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in targets(found):
        lines.append(f"| {t['what']} <= {t['at_most']} | {found[t['ratio']]:.2f} | "
                     f"{'yes' if t['met'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)
