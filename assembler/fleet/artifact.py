"""The OCI artifact of a cached layer: what its manifest lists and says, and reading it back.

One manifest per layer key, tagged with the key. Its layers are the whole chain below and
including that layer, bottom first: the base (only when the base itself was shared, being
built from a recipe rather than downloaded), then for each layer its cache entry (JSON) and
its overlay (qcow2, zstd-compressed). A pulled leaf thus always names the exact parents it
was built on, by digest; a registry refuses a manifest whose blobs it lacks, so nothing
half-pushed is ever listed.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from assembler.errors import AssemblerError

LAYER_ARTIFACT = "application/vnd.trove-image-assembler.layer.v1"
BASE_ARTIFACT = "application/vnd.trove-image-assembler.base.v1"
ENTRY = "application/vnd.trove-image-assembler.entry.v1+json"
DISK_PREFIX = "application/vnd.trove-image-assembler.disk.v1."  # + format + "+zstd"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
NS = "dev.trove-image-assembler."
KEY, KIND, PARENT, GENERATION = NS + "key", NS + "kind", NS + "parent", NS + "generation"
TOOL, BUILDER, SHA256, SIZE = NS + "tool-version", NS + "builder", NS + "sha256", NS + "size"
SLOT = NS + "slot"  # the matrix slot it fills (assembler.fleet.matrix): what prune keeps by
BASE_KIND = "base"
BASE_TAG_PREFIX = "base-"


class ArtifactError(AssemblerError):
    """A manifest in the cache registry is not one of our layers, or not whole."""


def disk_type(fmt: str) -> str:
    return f"{DISK_PREFIX}{fmt}+zstd"


def layer_tag(key: str) -> str:
    return key


def base_tag(recipe: str) -> str:
    return BASE_TAG_PREFIX + recipe


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        doc["size"] = self.size
        if self.annotations:
            doc["annotations"] = dict(sorted(self.annotations.items()))
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Descriptor:
        try:
            annotations = doc.get("annotations") or {}
            found = cls(str(doc["mediaType"]), str(doc["digest"]), int(doc["size"]), annotations)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"a layer descriptor is malformed ({exc})") from None
        if not isinstance(annotations, dict) or found.size < 0:
            raise ArtifactError("a layer descriptor is malformed")
        return found

    @property
    def is_disk(self) -> bool:
        return self.media_type.startswith(DISK_PREFIX)

    @property
    def disk_format(self) -> str:
        return self.media_type.removeprefix(DISK_PREFIX).removesuffix("+zstd")


@dataclass(frozen=True)
class Artifact:
    """A parsed manifest of ours: its artifact type, annotations, and the chain it lists."""

    artifact_type: str
    annotations: dict[str, str]
    layers: tuple[Descriptor, ...]

    @property
    def key(self) -> str:
        return self.annotations.get(KEY, "")

    @property
    def generation(self) -> str:
        return self.annotations.get(GENERATION, "")

    @property
    def created(self) -> float:
        """Unix time the layer was built (not pushed): --max-age measures from it."""
        try:
            return datetime.datetime.fromisoformat(self.annotations[CREATED]).timestamp()
        except (KeyError, ValueError):
            return 0.0

    @property
    def created_iso(self) -> str:
        return self.annotations.get(CREATED, "?")

    def top(self) -> tuple[Descriptor, Descriptor]:
        """The entry and overlay of the layer this manifest is for (the last two listed)."""
        if (
            len(self.layers) < 2
            or self.layers[-2].media_type != ENTRY
            or not self.layers[-1].is_disk
        ):
            raise ArtifactError(f"the manifest of {self.key[:12]} does not end with a layer")
        return self.layers[-2], self.layers[-1]

    def base(self) -> Descriptor:
        if (
            self.artifact_type != BASE_ARTIFACT
            or len(self.layers) != 1
            or not self.layers[0].is_disk
        ):
            raise ArtifactError(f"the manifest of base {self.key[:12]} does not hold one disk")
        return self.layers[0]


def iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat(timespec="microseconds")


def manifest(artifact: Artifact) -> bytes:
    """The manifest's bytes (compact and key-sorted: the same artifact, the same digest)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact.artifact_type,
        "config": {"mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": len(EMPTY_DATA)},
        "layers": [d.to_json() for d in artifact.layers],
        "annotations": dict(sorted(artifact.annotations.items())),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse(body: bytes, shown: str) -> Artifact:
    """One of our manifests, checked for shape (blobs are checked when fetched)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ArtifactError(f"{shown} is not JSON") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{shown} is not a manifest")
    kind = doc.get("artifactType")
    if kind not in (LAYER_ARTIFACT, BASE_ARTIFACT):
        raise ArtifactError(f"{shown} is a {kind or doc.get('mediaType')}, not a cached layer")
    layers = doc.get("layers")
    annotations = doc.get("annotations") or {}
    if not isinstance(layers, list) or not isinstance(annotations, dict):
        raise ArtifactError(f"{shown} is malformed")
    return Artifact(str(kind), annotations, tuple(Descriptor.from_json(d) for d in layers))
