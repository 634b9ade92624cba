"""Which image Trove takes, and moving that choice: retiring the images a new one replaces,
pruning old retired ones, and rolling back.

Trove takes the newest active image carrying every tag of the datastore version
(trove/common/glance.py `get_image_id`). Retiring takes an image out of that choice by removing
those tags or by deactivating it. What a rollback needs (the tags it had, when and how it was
retired) is written on the image in Glance, so a rollback works from any machine.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from assembler.publish.glance import CloudError, Glance, Image
from assembler.publish.spec import PROP_DATASTORE, PROP_TAGS

PROP_RETIRED_AT = "trove_assembler_retired_at"
PROP_RETIRED_HOW = "trove_assembler_retired_how"
PROP_RETIRED_FOR = "trove_assembler_retired_for"
RETIRED_PROPS = (PROP_RETIRED_AT, PROP_RETIRED_HOW, PROP_RETIRED_FOR)


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


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def chosen(images: Iterable[Image], tags: tuple[str, ...]) -> Image | None:
    """The image Trove would take among images: active, every tag, the newest."""
    eligible = [i for i in images if i.status == "active" and set(tags) <= set(i.tags)]
    return max(eligible, key=lambda i: i.created_at, default=None)


def is_retired(image: Image) -> bool:
    return PROP_RETIRED_AT in image.properties


def to_prune(retired: Iterable[Image], keep: int | None) -> list[Image]:
    """Retired images beyond the newest `keep` retirements (None: keep all)."""
    if keep is None:
        return []
    ordered = sorted(retired, key=lambda i: i.properties[PROP_RETIRED_AT], reverse=True)
    return ordered[keep:]


def retire(
    glance: Glance, image: Image, tags: tuple[str, ...], how: Retire, datastore: str, by: str
) -> Change:
    """Take image out of Trove's choice for tags; note on it how, for a rollback."""
    had = [t for t in tags if t in image.tags]
    glance.set_properties(
        image,
        {
            PROP_RETIRED_AT: now(),
            PROP_RETIRED_HOW: str(how),
            PROP_RETIRED_FOR: by,
            # An image uploaded by hand becomes ours to roll back to as well.
            PROP_DATASTORE: datastore,
            PROP_TAGS: image.properties.get(PROP_TAGS) or ",".join(had),
        },
    )
    if how is Retire.DEACTIVATE:
        glance.deactivate(image.id)
        return Change("deactivated", image, f"kept its tags {','.join(had)}")
    for tag in had:
        glance.remove_tag(image.id, tag)
    return Change("untagged", image, f"removed {','.join(had)}")


def restore(glance: Glance, image: Image, tags: tuple[str, ...]) -> Change:
    """Put a retired image (or a reused one) back into Trove's choice for tags."""
    done = []
    if image.status == "deactivated":
        glance.reactivate(image.id)
        done.append("reactivated")
    missing = [t for t in tags if t not in image.tags]
    for tag in missing:
        glance.add_tag(image.id, tag)
    if missing:
        done.append(f"tagged {','.join(missing)}")
    glance.set_properties(image, dict.fromkeys(RETIRED_PROPS))
    return Change("restored", image, " and ".join(done) or "already in place")


def retire_others(
    glance: Glance, keep: Image, tags: tuple[str, ...], how: Retire, datastore: str
) -> list[Change]:
    """Every other active image carrying all tags is retired, so that Trove takes `keep`."""
    carriers = glance.images(tag=list(tags), status="active")
    return [
        retire(glance, image, tags, how, datastore, by=keep.id)
        for image in carriers
        if image.id != keep.id
    ]


def prune(glance: Glance, datastore: str, keep: int | None, current: str) -> list[Change]:
    if keep is None:
        return []
    ours = [i for i in glance.images(**{PROP_DATASTORE: datastore}) if i.id != current]
    changes = []
    for image in to_prune([i for i in ours if is_retired(i)], keep):
        glance.delete(image.id)
        changes.append(Change("deleted", image, f"retired {image.properties[PROP_RETIRED_AT]}"))
    return changes


def rollback(glance: Glance, tags: tuple[str, ...], how: Retire, datastore: str) -> list[Change]:
    """Trove takes the image retired last again; the one it takes now is retired."""
    current = chosen(glance.images(tag=list(tags), status="active"), tags)
    retired = [
        i
        for i in glance.images(**{PROP_DATASTORE: datastore})
        if is_retired(i) and (current is None or i.id != current.id)
    ]
    if not retired:
        raise CloudError(f"nothing to roll back to: no retired image of {datastore} in Glance")
    previous = max(retired, key=lambda i: i.properties[PROP_RETIRED_AT])
    # The previous one first: Trove always finds an image, never none.
    changes = [restore(glance, previous, _tags_of(previous, tags))]
    if current is not None:
        changes.append(retire(glance, current, tags, how, datastore, by=previous.id))
    return changes


def _tags_of(image: Image, tags: tuple[str, ...]) -> tuple[str, ...]:
    """The tags an image had before it was retired (at least the version's own)."""
    recorded = tuple(t for t in image.properties.get(PROP_TAGS, "").split(",") if t)
    return tuple(dict.fromkeys((*tags, *recorded)))
