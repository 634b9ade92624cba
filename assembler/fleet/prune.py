"""`assembler cache prune --registry`: what the fleet's registry keeps of its layers.

Kept: for every slot of the current matrix (assembler.fleet.matrix), its N newest layers; the
layers those lie on (a runner walks a chain from the bottom, by tags); the bases of the
matrix's recipes. Every other manifest of ours is deleted by digest (with its tag). The space
comes back only when the registry collects its garbage (for docker-registry:
`registry garbage-collect --delete-untagged CONFIG`, with the registry read-only meanwhile).
Manifests that are not ours are never touched.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from assembler.fleet.artifact import BASE_ARTIFACT, PARENT, SLOT, Artifact, ArtifactError, parse
from assembler.fleet.remote import LayerRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    tag: str
    digest: str
    artifact: Artifact


def listing(shared: LayerRegistry) -> list[Found]:
    """Every manifest of ours in the repository, by tag."""
    found = []
    for tag in sorted(shared.client.tags(shared.repository)):
        fetched = shared.client.find_manifest(shared.repository, tag)
        if fetched is None:
            continue  # deleted meanwhile
        try:
            found.append(Found(tag, fetched.digest, parse(fetched.body, tag)))
        except ArtifactError:
            log.info("%s:%s is not a cached layer: left alone", shared.where, tag)
    return found


def choose(found: list[Found], slots: set[str], bases: set[str], keep: int) -> list[Found]:
    """What goes: see the module's docstring."""
    by_key = {f.artifact.key: f for f in found if f.artifact.artifact_type != BASE_ARTIFACT}
    per_slot: dict[str, list[Found]] = defaultdict(list)
    for f in by_key.values():
        slot = f.artifact.annotations.get(SLOT, "")
        if slot in slots:
            per_slot[slot].append(f)
    kept: set[str] = set()
    for group in per_slot.values():
        group.sort(key=lambda f: f.artifact.created, reverse=True)
        for f in group[:keep]:
            # With the chain below it: its parents' tags are how a runner reaches it.
            key: str | None = f.artifact.key
            while key is not None and key in by_key and key not in kept:
                kept.add(key)
                parent = by_key[key].artifact.annotations.get(PARENT, "")
                key = parent.split(".")[0] if "." in parent else None
    gone = []
    for f in found:
        if f.artifact.artifact_type == BASE_ARTIFACT:
            if f.artifact.key not in bases:
                gone.append(f)
        elif f.artifact.key not in kept:
            gone.append(f)
    return gone


def prune(shared: LayerRegistry, slots: set[str], bases: set[str], keep: int) -> list[Found]:
    gone = choose(listing(shared), slots, bases, keep)
    for f in gone:
        shared.client.delete_manifest(shared.repository, f.digest)
    return gone
