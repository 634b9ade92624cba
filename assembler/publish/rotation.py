"""Which image Trove takes, and moving that choice: retiring the images a new one replaces,
pruning old retired ones, and rolling back.

Trove takes the newest active image carrying every tag of the datastore version
(trove/common/glance.py `get_image_id`). Retiring takes an image out of that choice by removing
those tags or by deactivating it. What a rollback needs (the tags it had, when and how it was
retired, per datastore version) is written on the image in Glance, so a rollback works from any
machine. One image may be the current one of several versions (mysql and postgresql run in
containers on the same guest): retiring it for one never takes it from another.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from assembler.errors import UsageError
from assembler.publish.glance import CloudError, Glance, Image
from assembler.publish.spec import RETIRED_PREFIX, STATE_PREFIX, TAGS_PREFIX, Datastore


class Retire(StrEnum):
    UNTAG = "untag"
    DEACTIVATE = "deactivate"


@dataclass(frozen=True)
class Change:
    verb: str
    image: Image
    detail: str = ""

    def line(self) -> str:
        return f"{self.verb} {self.image.label()}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Retirement:
    """What `trove_assembler_retired_<version>` holds: when, how, for which image, and whether
    a rollback retired it (a rollback's target is what a publish retired, so that rollbacks
    walk back through the publishes instead of undoing each other)."""

    at: str
    how: Retire
    by: str
    rollback: bool = False

    def value(self) -> str:
        return f"{self.at} {self.how} {self.by}" + (" rollback" if self.rollback else "")

    @classmethod
    def of(cls, image: Image, slug: str) -> Retirement | None:
        """The record of the version `slug` (a Datastore's) on image, if any."""
        parts = image.properties.get(RETIRED_PREFIX + slug, "").split()
        if len(parts) not in (3, 4) or parts[1] not in tuple(Retire):
            return None
        return cls(parts[0], Retire(parts[1]), parts[2], parts[3:] == ["rollback"])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def chosen(images: Iterable[Image], tags: tuple[str, ...]) -> Image | None:
    """The image Trove would take among images: active, every tag, the newest."""
    eligible = [i for i in images if i.status == "active" and set(tags) <= set(i.tags)]
    return max(eligible, key=lambda i: i.created_at, default=None)


def _versions(image: Image, ds: Datastore) -> dict[str, str]:
    """The other versions recorded on image: their slug, and current or retired."""
    return {
        key.removeprefix(STATE_PREFIX): value
        for key, value in image.properties.items()
        if key.startswith(STATE_PREFIX) and key != ds.state_key
    }


def _tags_recorded(image: Image, slug: str) -> set[str]:
    return {t for t in image.properties.get(TAGS_PREFIX + slug, "").split(",") if t}


def needed_elsewhere(image: Image, ds: Datastore) -> set[str]:
    """The tags image carries for the other versions it is the current image of."""
    needed: set[str] = set()
    for slug, state in _versions(image, ds).items():
        if state == "current":
            needed |= _tags_recorded(image, slug)
    return needed


def to_prune(retired: Iterable[Image], ds: Datastore, keep: int | None) -> list[Image]:
    """Retired images beyond the newest `keep` retirements (None: keep all)."""
    if keep is None:
        return []
    dated = [(r.at, i) for i in retired if (r := Retirement.of(i, ds.slug)) is not None]
    return [i for _, i in sorted(dated, key=lambda p: p[0], reverse=True)][keep:]


def retire(
    glance: Glance,
    image: Image,
    ds: Datastore,
    tags: tuple[str, ...],
    how: Retire,
    by: str,
    rollback: bool = False,
) -> Change:
    """Take image out of Trove's choice for the version's tags; note on it how, for a rollback.
    An image uploaded by hand becomes one to roll back to as well."""
    had = [t for t in tags if t in image.tags]
    keep = needed_elsewhere(image, ds)
    also = ""
    if how is Retire.DEACTIVATE and keep:
        how, also = Retire.UNTAG, " (not deactivated: another version's current image)"
    siblings = [
        slug for slug, state in _versions(image, ds).items()
        if state == "current" and _tags_recorded(image, slug) <= set(tags)
    ]  # fmt: skip
    if siblings:
        # Trove finds those versions' image by a subset of these tags: it moves with this one.
        also += f"; warning: {', '.join(siblings)} find images by the same tags (give --tag)"
    glance.set_properties(
        image,
        {
            ds.state_key: "retired",
            ds.tags_key: image.properties.get(ds.tags_key) or ",".join(had),
            ds.retired_key: Retirement(now(), how, by, rollback).value(),
        },
    )
    if how is Retire.DEACTIVATE:
        glance.deactivate(image.id)
        return Change("deactivated", image, f"kept its tags {','.join(had)}")
    gone = [t for t in had if t not in keep]
    for tag in gone:
        glance.remove_tag(image.id, tag)
    return Change("untagged", image, f"removed {','.join(gone) or 'no tag'}{also}")


def restore(glance: Glance, image: Image, ds: Datastore, tags: tuple[str, ...]) -> Change:
    """Put a retired image (or a reused one) back into Trove's choice for the version."""
    done = []
    if image.status == "deactivated":
        glance.reactivate(image.id)
        done.append("reactivated")
        # Versions that retired it by deactivating left their tags on: active again, it would
        # be theirs again too. Their tags come off; their records say untag from now on.
        keep = needed_elsewhere(image, ds) | set(tags)
        for slug, state in _versions(image, ds).items():
            record = Retirement.of(image, slug)
            if state == "retired" and record is not None and record.how is Retire.DEACTIVATE:
                for tag in _tags_recorded(image, slug) - keep:
                    glance.remove_tag(image.id, tag)
                untagged = dataclasses.replace(record, how=Retire.UNTAG)
                glance.set_properties(image, {RETIRED_PREFIX + slug: untagged.value()})
                done.append(f"untagged for {slug}")
    missing = [t for t in tags if t not in image.tags]
    for tag in missing:
        glance.add_tag(image.id, tag)
    if missing:
        done.append(f"tagged {','.join(missing)}")
    glance.set_properties(
        image, {ds.state_key: "current", ds.tags_key: ",".join(tags), ds.retired_key: None}
    )
    return Change("restored", image, " and ".join(done) or "already in place")


def retire_others(
    glance: Glance, keep: Image, ds: Datastore, tags: tuple[str, ...], how: Retire
) -> list[Change]:
    """Every other active image carrying all tags is retired, so that Trove takes `keep`."""
    carriers = [
        i
        for i in glance.images(tag=list(tags), status="active")
        if i.id != keep.id and set(tags) <= set(i.tags)
    ]
    return [retire(glance, image, ds, tags, how, by=keep.id) for image in carriers]


def prune(glance: Glance, ds: Datastore, keep: int | None, current: str) -> list[Change]:
    """Retired images of the version beyond the newest `keep` go: deleted, or, if still the
    current image of another version, only no longer kept for this one."""
    retired = [i for i in glance.images(**{ds.state_key: "retired"}) if i.id != current]
    changes = []
    for image in to_prune(retired, ds, keep):
        if _versions(image, ds):
            drop = {ds.state_key: None, ds.tags_key: None, ds.retired_key: None}
            glance.set_properties(image, dict(drop))
            changes.append(Change("forgot", image, "kept: another version's image as well"))
            continue
        glance.delete(image.id)
        at = image.properties[ds.retired_key].split()[0]
        changes.append(Change("deleted", image, f"retired {at}, beyond --keep {keep}"))
    return changes


def rollback(glance: Glance, ds: Datastore, tags: tuple[str, ...], how: Retire) -> list[Change]:
    """Trove takes the image a publish retired last again; every image it could take now is
    retired (as by a rollback, so that the next rollback goes one further back)."""
    carriers = [
        i for i in glance.images(tag=list(tags), status="active") if set(tags) <= set(i.tags)
    ]
    current = chosen(carriers, tags)
    retired = [
        (r.at, i)
        for i in glance.images(**{ds.state_key: "retired"})
        if (r := Retirement.of(i, ds.slug)) is not None
        and not r.rollback
        and (current is None or i.id != current.id)
    ]
    if not retired:
        raise CloudError(f"nothing to roll back to: no image of {ds.key} retired by a publish")
    _, previous = max(retired, key=lambda p: p[0])
    recorded = _tags_recorded(previous, ds.slug)
    if recorded and recorded != set(tags):
        raise UsageError(
            f"{ds.key} was published with the tags {','.join(sorted(recorded))}: give the "
            "same --tag options to roll it back"
        )
    # The previous one first: Trove finds an image all along, never none.
    changes = [restore(glance, previous, ds, tags)]
    changes += [
        retire(glance, image, ds, tags, how, by=previous.id, rollback=True)
        for image in carriers
        if image.id != previous.id
    ]
    return changes
