"""A minimal OCI image layout (image-spec v1.1 `image-layout.md`) for the stand-in images.

Our own small writer and reader, independent of any registry client: `oci-layout`, `index.json`
naming the one manifest by `org.opencontainers.image.ref.name`, and content-addressed blobs under
`blobs/sha256/`. JSON is written with sorted keys and no spaces, so the same image is the same
digests on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.errors import AssemblerError
from assembler.standin.layer import LayerBlob

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Image:
    """What a layout holds, read back: enough to derive a variant image from it."""

    layout: Path
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[LayerBlob]:
        diff_ids = self.config["rootfs"]["diff_ids"]
        return [
            LayerBlob(digest=d["digest"], diff_id=diff_id, size=d["size"])
            for d, diff_id in zip(self.manifest["layers"], diff_ids, strict=True)
        ]

    def blob(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def add_layer(layout: Path, blob: Path, layer: LayerBlob) -> None:
    """Move (or, from another layout, hard-link) a packed layer into the layout's blobs."""
    dest = blob_path(layout, layer.digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return
    try:
        os.link(blob, dest)
    except OSError:  # another file system
        shutil.copyfile(blob, dest)


def write_image(
    layout: Path, config: dict[str, Any], layers: list[LayerBlob], ref_name: str,
    annotations: dict[str, str],
) -> str:  # fmt: skip
    """Write config, manifest, index.json and oci-layout; the layers' blobs must be in place.

    Returns the manifest's digest.
    """
    for layer in layers:
        if not blob_path(layout, layer.digest).is_file():
            raise AssemblerError(f"layer {layer.digest} is missing from {layout}")
    config_desc = _write_blob(layout, CONFIG_TYPE, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_desc,
        "layers": [{"mediaType": LAYER_TYPE, "digest": x.digest, "size": x.size} for x in layers],
        "annotations": annotations,
    }
    manifest_desc = _write_blob(layout, MANIFEST_TYPE, manifest)
    platform = {"architecture": config["architecture"], "os": config["os"]}
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{**manifest_desc, "platform": platform, "annotations": {REF_NAME: ref_name}}],
    }
    (layout / "index.json").write_bytes(_canonical(index))
    (layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return str(manifest_desc["digest"])


def read_image(layout: Path) -> Image:
    """The one image of a layout this module wrote."""
    try:
        index = json.loads((layout / "index.json").read_text())
        desc = index["manifests"][0]
        manifest = json.loads(blob_path(layout, desc["digest"]).read_text())
        config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_text())
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise AssemblerError(f"{layout} is not a readable OCI image layout: {exc}") from exc
    return Image(layout=layout, manifest=manifest, config=config)


def _write_blob(layout: Path, media_type: str, doc: dict[str, Any]) -> dict[str, Any]:
    data = _canonical(doc)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
