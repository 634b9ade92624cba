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

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from assembler.publish.glance import CloudError, Glance, Image
from assembler.publish.spec import Datastore

STATE_PREFIX = "trove_assembler_state_"
TAGS_PREFIX = "trove_assembler_tags_"


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
    """What `trove_assembler_retired_<version>` holds: when, how, for which image."""

    at: str
    how: Retire
    by: str

    def value(self) -> str:
        return f"{self.at} {self.how} {self.by}"

    @classmethod
    def of(cls, image: Image, ds: Datastore) -> Retirement | None:
        parts = image.properties.get(ds.retired_key, "").split()
        if len(parts) != 3 or parts[1] not in tuple(Retire):
            return None
        return cls(parts[0], Retire(parts[1]), parts[2])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def chosen(images: Iterable[Image], tags: tuple[str, ...]) -> Image | None:
    """The image Trove would take among images: active, every tag, the newest."""
    eligible = [i for i in images if i.status == "active" and set(tags) <= set(i.tags)]
    return max(eligible, key=lambda i: i.created_at, default=None)


def needed_elsewhere(image: Image, ds: Datastore) -> set[str]:
    """The tags image carries for the other versions it is the current image of."""
    needed: set[str] = set()
    for key, value in image.properties.items():
        if key.startswith(STATE_PREFIX) and key != ds.state_key and value == "current":
            tags_key = TAGS_PREFIX + key.removeprefix(STATE_PREFIX)
            needed |= {t for t in image.properties.get(tags_key, "").split(",") if t}
    return needed


def to_prune(retired: Iterable[Image], ds: Datastore, keep: int | None) -> list[Image]:
    """Retired images beyond the newest `keep` retirements (None: keep all)."""
    if keep is None:
        return []
    dated = [(r.at, i) for i in retired if (r := Retirement.of(i, ds)) is not None]
    return [i for _, i in sorted(dated, key=lambda p: p[0], reverse=True)][keep:]


def retire(
    glance: Glance, image: Image, ds: Datastore, tags: tuple[str, ...], how: Retire, by: str
) -> Change:
    """Take image out of Trove's choice for the version's tags; note on it how, for a rollback.
    An image uploaded by hand becomes one to roll back to as well."""
    had = [t for t in tags if t in image.tags]
    keep = needed_elsewhere(image, ds)
    also = ""
    if how is Retire.DEACTIVATE and keep:
        how, also = Retire.UNTAG, " (not deactivated: another version's current image)"
    glance.set_properties(
        image,
        {
            ds.state_key: "retired",
            ds.tags_key: image.properties.get(ds.tags_key) or ",".join(had),
            ds.retired_key: Retirement(now(), how, by).value(),
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
    carriers = [i for i in glance.images(tag=list(tags), status="active") if i.id != keep.id]
    return [retire(glance, image, ds, tags, how, by=keep.id) for image in carriers]


def prune(glance: Glance, ds: Datastore, keep: int | None, current: str) -> list[Change]:
    """Retired images of the version beyond the newest `keep` go: deleted, or, if still the
    current image of another version, only no longer kept for this one."""
    retired = [i for i in glance.images(**{ds.state_key: "retired"}) if i.id != current]
    changes = []
    for image in to_prune(retired, ds, keep):
        if needed_elsewhere(image, ds):
            drop = {ds.state_key: None, ds.tags_key: None, ds.retired_key: None}
            glance.set_properties(image, dict(drop))
            changes.append(Change("forgot", image, "still another version's current image"))
            continue
        glance.delete(image.id)
        at = image.properties[ds.retired_key].split()[0]
        changes.append(Change("deleted", image, f"retired {at}, beyond --keep {keep}"))
    return changes


def rollback(glance: Glance, ds: Datastore, tags: tuple[str, ...], how: Retire) -> list[Change]:
    """Trove takes the image retired last again; the one it takes now is retired."""
    current = chosen(glance.images(tag=list(tags), status="active"), tags)
    retired = [
        (r.at, i)
        for i in glance.images(**{ds.state_key: "retired"})
        if (r := Retirement.of(i, ds)) is not None and (current is None or i.id != current.id)
    ]
    if not retired:
        raise CloudError(f"nothing to roll back to: no retired image of {ds.key} in Glance")
    _, previous = max(retired, key=lambda p: p[0])
    # The previous one first: Trove finds an image all along, never none.
    changes = [restore(glance, previous, ds, tags)]
    if current is not None:
        changes.append(retire(glance, current, ds, tags, how, by=previous.id))
    return changes
