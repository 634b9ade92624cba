"""Layers as data: what a layer is (its steps, inputs, host work) and the one loop that builds one.

A step is `step(g, cfg, **facts)`: the guestfs handle, the frozen config, and by parameter name
whatever build facts it needs beyond them (the guest's mountpoints, the agent's payload...).
A step may return new facts (a dict) for the steps after it. A layer's key holds its inputs,
its declaration (the steps' names and functions) and the digest of the code its steps import
(assembler.codeid), so adding a step module, or editing one a step imports, renews exactly
the layers that run it.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from assembler import cancel, codeid, progress
from assembler.accel import Accel
from assembler.config import BuildConfig
from assembler.errors import AssemblerError, BuildError
from assembler.facts import FACT_NAMES, Facts, Prepared
from assembler.guest import appliance
from assembler.manifest import StepRecord
from assembler.resources import resource_files

log = logging.getLogger(__name__)

Step = Callable[..., dict[str, Any] | None]


def _always(cfg: BuildConfig, facts: Facts) -> bool:
    return True


@dataclass(frozen=True)
class Layer:
    name: str
    steps: tuple[tuple[str, Step], ...]
    # What else its content depends on: config values, wheel hashes, image digests...
    inputs: Callable[[BuildConfig, Facts], dict[str, Any]]
    # Directories of files its steps copy into the image (their content is part of its code).
    resources: tuple[str, ...] = ()
    prepare: Callable[[BuildConfig, Facts], Prepared] | None = None
    # Read from the guest when its steps are done, into its record (kept in the cache).
    report: Callable[[Any, Facts], dict[str, Any]] | None = None
    # Record entries the layers above use as facts (a cached layer gives them too).
    gives: tuple[str, ...] = ()
    network: bool = False  # the appliance reaches the network
    ages: bool = False  # installed packages: rebuilt past the maximum age
    sized: bool = False  # its overlay has the image's size (the disk grows in this layer)
    when: Callable[[BuildConfig, Facts], bool] = _always
    # Kept in the build's scratch space rather than the cache (it holds a key made for this
    # build alone: caching it would fill the cache with layers no build can reuse).
    private: Callable[[BuildConfig, Facts], bool] = lambda cfg, facts: False
    # Why this layer is never shared with other builders (through --cache-registry), if it
    # is not: it holds a secret. Nothing above it is shared either (it lies on it).
    secret: Callable[[BuildConfig], str | None] = lambda cfg: None
    # What it depends on as configured, before anything is resolved (digests of wheels and
    # images, the parent's generation): a build matrix plans with it (assembler.fleet.matrix).
    declared: Callable[[BuildConfig], dict[str, Any]] = lambda cfg: {}
    # Whether a build of cfg has this layer, known before the build (for the matrix).
    planned: Callable[[BuildConfig], bool] = lambda cfg: True

    def modules(self) -> list[str]:
        roots = [codeid.module_of(step) for _, step in self.steps]
        # Its inputs are not code of it: what they return is in the key itself.
        roots += [codeid.module_of(f) for f in (self.prepare, self.report) if f]
        return codeid.closure(roots)

    def code(self) -> str:
        files = [p for d in self.resources for p in resource_files(d)]
        return codeid.digest(self.modules(), files)

    def declaration(self) -> list[str]:
        """The steps in order, by name and function: reordering or swapping them is a change."""
        return [f"{name}={_qualname(step)}" for name, step in self.steps]

    def key_inputs(self, cfg: BuildConfig, facts: Facts) -> dict[str, Any]:
        return {
            "code": self.code(),
            "steps": self.declaration(),
            "network": self.network,
            **self.inputs(cfg, facts),
        }


def _qualname(func: Callable[..., Any]) -> str:
    return f"{codeid.module_of(func)}.{getattr(func, '__qualname__', repr(func))}"


def bind(step: Step, facts: Facts) -> dict[str, Any]:
    """The facts a step names after (g, cfg)."""
    params = list(inspect.signature(step).parameters.values())[2:]
    unknown = [p.name for p in params if p.name not in FACT_NAMES]
    if unknown:
        raise TypeError(f"step {_qualname(step)} asks for unknown facts {unknown}")
    return {p.name: getattr(facts, p.name) for p in params}


def run_steps(
    g: Any,
    cfg: BuildConfig,
    facts: Facts,
    steps: tuple[tuple[str, Step], ...],
    records: list[StepRecord],
) -> Facts:
    for name, step in steps:
        cancel.check()
        progress.step_started(name)
        started = time.monotonic()
        try:
            facts = facts.learn(step(g, cfg, **bind(step, facts)))
        except AssemblerError:
            raise
        except RuntimeError as exc:  # guestfs reports every failed call as RuntimeError
            cancel.check()  # the appliance was stopped under it: an interruption, not a fault
            raise BuildError(name, str(exc).strip().splitlines()[-1]) from exc
        seconds = time.monotonic() - started
        records.append(StepRecord(name, seconds))
        progress.step_done(name, seconds)
    return facts


def build_layer(
    layer: Layer, overlay: Path, cfg: BuildConfig, facts: Facts, accel: Accel
) -> dict[str, Any]:
    """One appliance launch on the layer's overlay, its host work done meanwhile, its steps
    run; returns the layer's record."""
    scratch = facts.scratch / layer.name
    scratch.mkdir(parents=True)
    facts = replace(facts, scratch=scratch)
    records: list[StepRecord] = []
    record: dict[str, Any] = {}
    try:
        # Two cores, two jobs: the host's part runs while the appliance boots.
        with ThreadPoolExecutor(1) as pool:
            prepared = pool.submit(_timed, layer.prepare, cfg, facts) if layer.prepare else None
            started = time.monotonic()
            progress.step_started("launch")
            with appliance([(overlay, "qcow2")], accel=accel, network=layer.network) as g:
                records.append(StepRecord("launch", time.monotonic() - started))
                progress.step_done("launch", records[-1].seconds)
                if prepared is not None:
                    done, seconds = prepared.result()
                    records.insert(0, StepRecord(f"{layer.name}-prepare", seconds))
                    facts = facts.learn(done.facts)
                    record.update(done.record)
                facts = run_steps(g, cfg, facts, layer.steps, records)
                if layer.report is not None:
                    record.update(layer.report(g, facts))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"steps": [asdict(s) for s in records], **record}


def _timed(func: Callable[[BuildConfig, Facts], Prepared], cfg: BuildConfig, facts: Facts) -> Any:
    started = time.monotonic()
    return func(cfg, facts), time.monotonic() - started
