"""A build matrix: releases x modes x datastore images x formats, each cell one `assembler build`.

The matrix file (TOML):

    guest-os = "debian"                   # every cell's --guest-os (default ubuntu)
    releases = ["bookworm", "trixie"]
    modes = ["production", "dev"]
    formats = ["qcow2", "raw"]
    output-dir = "images"                 # a cell writes <output-dir>/<cell id>.<extension>
    args = ["--base", "archive"]          # given to every cell's build
    cache-registry = "registry.example:5000/trove/layers"   # optional: the layers' registry
    [datastores]                          # optional: a name, and the --datastore-image values
    none = []
    postgresql = ["docker.io/library/postgres:15"]

A cell's id is `<release>-<mode>-<datastore>-<format>`: stable while the file names it. Its
layers are planned by their slots: a digest of each layer's name, declared inputs and the slot
below it. Two cells with a slot in common share that layer (the same key once built), so the
cells go in stages: a cell runs once every slot it shares has been built by a cell of an
earlier stage, and no two cells of one stage build the same slot.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler.config import ARCHIVE_BASE, BuildConfig
from assembler.errors import UsageError
from assembler.formats import FORMATS, ImageFormat

MODES = ("production", "dev")
_KEYS = {
    "guest-os", "releases", "modes", "formats", "output-dir", "args", "datastores",
    "cache-registry",
}  # fmt: skip


@dataclass(frozen=True)
class Cell:
    id: str
    release: str
    mode: str
    datastore: str
    format: str
    argv: tuple[str, ...]  # its `assembler build` arguments
    output: str


@dataclass(frozen=True)
class Planned:
    """A cell with its layers' slots (None: the layer holds a secret, it is never shared)."""

    cell: Cell
    slots: tuple[tuple[str, str | None], ...]
    stage: int = 0


@dataclass(frozen=True)
class Matrix:
    path: Path
    guest_os: str
    releases: tuple[str, ...]
    modes: tuple[str, ...]
    formats: tuple[str, ...]
    datastores: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"none": ()})
    output_dir: str = "images"
    args: tuple[str, ...] = ()
    cache_registry: str | None = None

    def cells(self) -> list[Cell]:
        found = []
        for release in self.releases:
            for mode in self.modes:
                for name, images in self.datastores.items():
                    for fmt in self.formats:
                        found.append(self._cell(release, mode, name, images, fmt))
        return found

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells():
            if cell.id == cell_id:
                return cell
        known = ", ".join(c.id for c in self.cells())
        raise UsageError(f"{self.path} has no cell {cell_id!r} (its cells: {known})")

    def _cell(self, release: str, mode: str, name: str, images: tuple[str, ...], fmt: str) -> Cell:
        cell_id = f"{release}-{mode}-{name}-{fmt}"
        output = f"{self.output_dir}/{cell_id}{FORMATS[ImageFormat(fmt)].extensions[0]}"
        argv = [
            "--guest-os", self.guest_os, "--release", release, "--format", fmt,
            "--dev-mode" if mode == "dev" else "--no-dev-mode", "-o", output,
        ]  # fmt: skip
        for image in images:
            argv += ["--datastore-image", image]
        if self.cache_registry:
            argv += ["--cache-registry", self.cache_registry]
        return Cell(cell_id, release, mode, name, fmt, (*argv, *self.args), output)


def load(path: Path) -> Matrix:
    """The matrix file at path; every mistake in it is one UsageError naming the field."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"matrix file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read matrix file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"matrix file {path} is not TOML: {exc}") from None
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise UsageError(f"matrix file {path}: unknown field {unknown[0]!r}")
    releases = _strings(doc, "releases", path)
    modes = _strings(doc, "modes", path, ["production"])
    formats = _strings(doc, "formats", path, ["qcow2"])
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"matrix file {path}: mode {mode!r} is not production or dev")
    for fmt in formats:
        if fmt not in {str(f) for f in ImageFormat}:
            raise UsageError(f"matrix file {path}: format {fmt!r} is not one we write")
    datastores = doc.get("datastores", {"none": []})
    if not isinstance(datastores, dict) or not datastores:
        raise UsageError(f"matrix file {path}: datastores is a table of name = [images]")
    for name, images in datastores.items():
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise UsageError(f"matrix file {path}: datastores.{name} is not a list of images")
        if not name.replace("_", "").isalnum() or not name.islower():
            raise UsageError(f"matrix file {path}: datastore name {name!r} is not [a-z0-9_]")
    guest_os = doc.get("guest-os", "ubuntu")
    output_dir = doc.get("output-dir", "images")
    registry = doc.get("cache-registry")
    if not all(isinstance(v, str) for v in (guest_os, output_dir, registry or "")):
        raise UsageError(f"matrix file {path}: guest-os, output-dir, cache-registry are strings")
    return Matrix(
        path=path,
        guest_os=guest_os,
        releases=tuple(releases),
        modes=tuple(modes),
        formats=tuple(formats),
        datastores={k: tuple(v) for k, v in datastores.items()},
        output_dir=output_dir,
        args=tuple(_strings(doc, "args", path, [])),
        cache_registry=registry,
    )


def _strings(
    doc: dict[str, Any], key: str, path: Path, default: list[str] | None = None
) -> list[str]:
    value = doc.get(key, default)
    if value is None:
        raise UsageError(f"matrix file {path}: {key} is missing")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"matrix file {path}: {key} is not a list of strings")
    if key != "args" and (not value or len(set(value)) != len(value)):
        raise UsageError(f"matrix file {path}: {key} is empty or names one twice")
    return value


# ----- planning ----------------------------------------------------------------------------


def base_slot(cfg: BuildConfig) -> str:
    """What the base is, the same on every runner: a recipe's key, or where it comes from."""
    if cfg.base == ARCHIVE_BASE:
        from assembler.base import BaseSpec, base_key

        return "archive:" + base_key(BaseSpec(cfg.release, mirror=cfg.mirror))
    if cfg.base and Path(cfg.base).is_file():
        from assembler.digestmemo import sha256_of

        return "sha256:" + sha256_of(Path(cfg.base))
    where = cfg.base or cfg.base_url or "published"
    return f"image:{cfg.release.codename}:{where}:{cfg.base_sha256 or ''}"


def slots(cfg: BuildConfig) -> tuple[tuple[str, str | None], ...]:
    """Each layer a build of cfg has, with its slot (None from the first one with a secret)."""
    from assembler.build import LAYERS

    below: str | None = base_slot(cfg)
    found = []
    for layer in LAYERS:
        if not layer.planned(cfg):
            continue
        if below is not None and layer.secret(cfg) is None:
            doc = {"name": layer.name, "below": below, "declared": layer.declared(cfg)}
            text = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
            below = hashlib.sha256(text.encode()).hexdigest()[:32]
        else:
            below = None
        found.append((layer.name, below))
    return tuple(found)


def stages(planned: list[Planned]) -> list[Planned]:
    """Each cell with its stage (1, 2, ...): after the cells that build the slots it shares."""
    builder: dict[str, int] = {}  # slot -> index of the first cell having it
    for i, p in enumerate(planned):
        for _, slot in p.slots:
            if slot is not None:
                builder.setdefault(slot, i)
    staged: list[Planned] = []
    for i, p in enumerate(planned):
        stage = 1
        for _, slot in p.slots:
            if slot is not None and builder[slot] != i:
                stage = max(stage, staged[builder[slot]].stage + 1)
        staged.append(Planned(p.cell, p.slots, stage))
    return staged


def plan(matrix: Matrix, config_of: Any) -> list[Planned]:
    """The matrix's cells with their slots and stages; config_of(argv) -> BuildConfig."""
    return stages([Planned(c, slots(config_of(list(c.argv)))) for c in matrix.cells()])


def pick(planned: list[Planned], stage: str, index: str) -> Cell:
    """The index-th cell of a stage (as an Indexed Job's pod finds its own)."""
    try:
        number, i = int(stage), int(index)
    except ValueError:
        raise UsageError(f"--stage {stage!r} and --cell-index {index!r} are numbers") from None
    cells = [p.cell for p in planned if p.stage == number]
    if not 0 <= i < len(cells):
        raise UsageError(f"stage {number} has {len(cells)} cells: no index {i}")
    return cells[i]


def by_stage(planned: list[Planned]) -> list[list[Planned]]:
    count = max((p.stage for p in planned), default=0)
    return [[p for p in planned if p.stage == n] for n in range(1, count + 1)]


def as_json(planned: list[Planned]) -> dict[str, Any]:
    cells = [
        {
            "id": p.cell.id,
            "stage": p.stage,
            "output": p.cell.output,
            "argv": list(p.cell.argv),
            "layers": [{"name": n, "slot": s} for n, s in p.slots],
        }
        for p in planned
    ]
    # Per stage, what a GitHub matrix takes (`fromJSON`): {"cell": [ids]}.
    stages = [{"cell": [p.cell.id for p in stage]} for stage in by_stage(planned)]
    return {"cells": cells, "stages": stages}


def describe(planned: list[Planned]) -> str:
    rows = [("STAGE", "CELL", "LAYERS (slot, or private)")]
    for p in planned:
        layers = "  ".join(f"{n} {s[:12] if s else '(private)'}" for n, s in p.slots)
        rows.append((str(p.stage), p.cell.id, layers))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}" for r in rows]
    shared = {s for p in planned for _, s in p.slots if s}
    lines.append(
        f"{len(planned)} cells in {len(by_stage(planned))} stages; {len(shared)} shared layers"
    )
    return "\n".join(lines)


def take_options(args: list[str], names: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Remove `--name VALUE` and `--name=VALUE` for names from args: (the rest, the values)."""
    rest: list[str] = []
    picked: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in names:
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name} needs a value")
                value = args[i + 1]
                i += 1
            picked[name] = value
        else:
            rest.append(arg)
        i += 1
    return rest, picked
