"""What Glance is told about an image: read from its manifest, never guessed from the file."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler import __version__
from assembler.distros import RELEASES
from assembler.errors import UsageError
from assembler.formats import FORMATS, ImageFormat
from assembler.manifest import manifest_path, sha256_file

# Trove's API takes at most 5 tags of at most 20 characters (its datastore version schema).
MAX_TAGS = 5
MAX_TAG_LENGTH = 20
# What every image of ours carries: the build it is (and that a publish of ours made it, so a
# queued upload left behind is ours to remove).
PROP_MANIFEST = "trove_assembler_manifest_sha256"
PROP_VERSION = "trove_assembler_version"
# Per datastore version (Datastore.slug follows): current or retired, its tags, its retirement.
STATE_PREFIX = "trove_assembler_state_"
TAGS_PREFIX = "trove_assembler_tags_"
RETIRED_PREFIX = "trove_assembler_retired_"
# The libosinfo names Nova and Horizon know the distributions by.
OS_DISTRO = {"ubuntu": "ubuntu", "debian": "debian"}
FIRMWARE = ("bios", "uefi")


@dataclass(frozen=True)
class Datastore:
    name: str
    version: str
    manager: str

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    # One guest image serves many datastore versions (the database is a container), so what a
    # publish records is per version: whether the image is its current one or retired (a value
    # Glance can filter on), the tags it has for it, and when, how and for what it was retired.
    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.key.lower())

    @property
    def state_key(self) -> str:
        return STATE_PREFIX + self.slug

    @property
    def tags_key(self) -> str:
        return TAGS_PREFIX + self.slug

    @property
    def retired_key(self) -> str:
        return RETIRED_PREFIX + self.slug


def parse_datastore(text: str, manager: str | None) -> Datastore:
    name, sep, version = text.partition(":")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", name) or not version.strip():
        raise UsageError(f"--datastore wants NAME:VERSION (e.g. mysql:8.4), not {text!r}")
    return Datastore(name, version, manager or name)


@dataclass(frozen=True)
class ImageSpec:
    """One Glance image to create: its fields, tags and properties (all strings, as Glance
    stores them)."""

    path: Path
    name: str
    disk_format: str
    visibility: str
    tags: tuple[str, ...]
    properties: dict[str, str]
    size: int
    sha256: str  # of the file, as the manifest records it

    def body(self) -> dict[str, Any]:
        """The POST /v2/images document."""
        return {
            "name": self.name,
            "disk_format": self.disk_format,
            "container_format": "bare",
            "visibility": self.visibility,
            "tags": list(self.tags),
            **self.properties,
        }


@dataclass(frozen=True)
class SpecOptions:
    datastore: Datastore
    name: str | None = None
    extra_tags: tuple[str, ...] = ()
    visibility: str = "private"
    firmware: str | None = None  # which one Glance is told, for an image that boots with both


def read_manifest(image: Path) -> dict[str, Any]:
    path = manifest_path(image)
    if not image.is_file():
        raise UsageError(f"{image} is not a file")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{image} has no manifest ({path.name}): publish takes images this tool built"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the manifest {path}: {exc}") from None
    for key in ("inputs", "output", "tool"):
        if not isinstance(doc.get(key), dict):
            raise UsageError(f"the manifest {path} has no {key!r}: not one of ours")
    return dict(doc)


def tags_for(datastore: Datastore, extra: tuple[str, ...]) -> tuple[str, ...]:
    tags = tuple(dict.fromkeys(("trove", datastore.name, *extra)))
    if len(tags) > MAX_TAGS:
        raise UsageError(f"Trove takes at most {MAX_TAGS} image tags, not {len(tags)}: {tags}")
    for tag in tags:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", tag) or len(tag) > MAX_TAG_LENGTH:
            raise UsageError(
                f"image tag {tag!r}: Trove takes at most {MAX_TAG_LENGTH} letters, digits, "
                "'.', '_', ':' or '-'"
            )
    return tags


def firmware_type(recorded: list[str], wanted: str | None) -> str:
    """The hw_firmware_type Nova boots the image with: what the disk holds; for a hybrid disk
    BIOS (Nova's own default) unless the operator asks for UEFI."""
    held = [f for f in FIRMWARE if f in recorded]
    if not held:
        raise UsageError("the manifest records no firmware the image boots with")
    if wanted is None:
        return held[0]
    if wanted not in held:
        raise UsageError(f"--firmware {wanted}: the image boots only with {', '.join(held)}")
    return wanted


def image_spec(image: Path, manifest: dict[str, Any], opts: SpecOptions) -> ImageSpec:
    inputs, output = manifest["inputs"], manifest["output"]
    try:
        fmt = ImageFormat(output["format"])
        release = RELEASES[inputs["release"]]
        built = datetime.datetime.fromisoformat(output["built_at"])
        guest_os, dev, size, sha = (
            inputs["guest_os"], bool(inputs["dev_mode"]), int(output["size"]), output["sha256"]
        )  # fmt: skip
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"the manifest of {image} is incomplete or not ours ({exc})") from None
    name = opts.name or "-".join(
        ["trove-guest", guest_os, release.codename, *(["dev"] if dev else []), f"{built:%Y%m%d}"]
    )
    tags = tags_for(opts.datastore, opts.extra_tags)
    properties = {
        "os_distro": OS_DISTRO[guest_os],
        "os_version": release.version,
        "hw_disk_bus": "virtio",
        "hw_firmware_type": firmware_type(list(manifest.get("firmware") or []), opts.firmware),
        opts.datastore.state_key: "current",
        opts.datastore.tags_key: ",".join(tags),
        PROP_MANIFEST: sha256_file(manifest_path(image)),
        PROP_VERSION: __version__,
    }
    return ImageSpec(
        path=image,
        name=name,
        disk_format=FORMATS[fmt].glance_disk_format,
        visibility=opts.visibility,
        tags=tags,
        properties=properties,
        size=size,
        sha256=sha,
    )
