"""A compressed qcow2 output that does not start from zero: the top layer's clusters written
over a copy of the compressed flattening of the layers below it.

Compressing the whole disk is most of an agent-only rebuild, yet only the agent layer
changed. So the layers below the top are flattened and compressed once (kept in the output
cache like any output), and an output is that file copied, its clusters as they are, with the
top layer laid over it by qemu-img itself:

1. every extent the top layer holds (data or explicit zeros) is zeroed in the copy
   (`qemu-io write -z -u`: the lower clusters there are freed, not rewritten);
2. `qemu-img convert -c -n --target-is-zero` writes the top layer, opened without its backing
   file, onto the copy: what the top leaves unallocated reads as zero and is skipped, so the
   lower clusters stay; where the top holds data the copy really is zero now, so skipping
   zeros there is right too.

qemu-img compresses a cluster only whole, so the top and the copy must share a cluster size,
and the top must not use sub-clusters (extended_l2): `Unstackable` says so and the caller
converts the whole chain instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.convert import image_info
from assembler.run import run

log = logging.getLogger(__name__)

# qemu-io takes a command per -c; a few thousand keep each argv far below the kernel's limit.
BATCH = 2000
# One qemu-io request stays below QEMU's limit of 2 GiB; a trimmed layer holds larger zeros.
MAX_REQUEST = 1 << 30


class Unstackable(Exception):
    """The top layer cannot be laid over the lower flattening cluster for cluster."""


@dataclass(frozen=True)
class Extent:
    start: int
    length: int


def alone(top: Path) -> str:
    """qemu's name for the top layer read without its backing file (unallocated reads zero)."""
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": str(top)}, "backing": None}
    return "json:" + json.dumps(spec)


def held_extents(top: Path) -> list[Extent]:
    """What the top layer itself holds: data clusters and explicit zero clusters."""
    out = run(["qemu-img", "map", "--output=json", alone(top)])
    extents = []
    for e in json.loads(out):
        if e["present"]:
            for start in range(e["start"], e["start"] + e["length"], MAX_REQUEST):
                extents.append(Extent(start, min(MAX_REQUEST, e["start"] + e["length"] - start)))
    return extents


def _geometry(info: dict[str, Any]) -> tuple[int, int, bool]:
    specific = info.get("format-specific", {}).get("data", {})
    return int(info["virtual-size"]), int(info["cluster-size"]), bool(specific.get("extended-l2"))


def check_stackable(top: Path, lower: Path) -> None:
    top_info, lower_info = image_info(top), image_info(lower)
    if top_info.get("format") != "qcow2" or lower_info.get("format") != "qcow2":
        raise Unstackable("both must be qcow2")
    (t_size, t_cluster, t_sub), (l_size, l_cluster, _) = _geometry(top_info), _geometry(lower_info)
    if t_size != l_size:
        raise Unstackable(f"virtual sizes differ ({t_size} and {l_size})")
    if t_cluster != l_cluster:
        raise Unstackable(f"cluster sizes differ ({t_cluster} and {l_cluster})")
    if t_sub:
        raise Unstackable("the top layer uses sub-clusters")
    if lower_info.get("backing-filename"):
        raise Unstackable("the lower flattening has a backing file")


def lay_over(top: Path, target: Path) -> int:
    """Write the top layer over `target` (a compressed qcow2 of the layers below it), in place;
    returns the bytes the top held. The caller owns `target` and renames it when this returns."""
    check_stackable(top, target)
    extents = held_extents(top)
    for i in range(0, len(extents), BATCH):
        argv: list[str | Path] = ["qemu-io", "-f", "qcow2"]
        for e in extents[i : i + BATCH]:
            argv += ["-c", f"write -q -z -u {e.start} {e.length}"]
        run([*argv, target])
    run(["qemu-img", "convert", "-q", "-c", "-n", "--target-is-zero", "-m", "8", "-W",
         alone(top), "-O", "qcow2", target])  # fmt: skip
    # Metadata only, so cheap: a refcount or L2 error here would be a corrupt image shipped.
    run(["qemu-img", "check", "-q", "-f", "qcow2", target])
    held = sum(e.length for e in extents)
    log.info("top layer laid over the kept lower layers: %d MiB of clusters", held >> 20)
    return held
