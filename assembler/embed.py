"""Datastore images embedded in the guest image: fetched by the host, without a docker daemon.

Each --datastore-image is fetched from its registry over the OCI distribution API (digests
verified, credentials from docker's config.json), or read from a `docker save` archive or an
OCI layout, then written as a `docker save` archive under its target name. The guest's
dockerd loads it into docker's store at build time, or trove-image-loader at the first boot
(--embed-mode; steps/datastore_images.py).

Credentials are used for the registry's requests only: nothing they touch is logged or kept.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.config import EmbeddedImage, SourceKind
from assembler.oci import credentials as oci_credentials
from assembler.oci.layout import Image, pull, read_image, write_docker_archive
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient
from assembler.paths import cache_dir

log = logging.getLogger(__name__)

# In the guest: where the archives wait for trove-image-loader (overlays/agent).
GUEST_DIR = "/var/lib/trove-image-assembler/datastore-images"


@dataclass(frozen=True)
class Fetched:
    spec: EmbeddedImage
    image: Image
    manifest_digest: str | None  # as the registry served it; None for an archive or layout

    @property
    def image_id(self) -> str:
        """docker's image ID: the config's digest, the same however the image travelled."""
        return self.image.config.digest

    def record(self) -> dict[str, Any]:
        """For the build's manifest and the layer's key: names and digests, no credentials."""
        return {
            "ref": self.spec.target,
            "source": {"kind": str(self.spec.kind), "name": self.spec.source},
            "image_id": self.image_id,
            "manifest_digest": self.manifest_digest,
            "layers": [layer.digest for layer in self.image.layers],
            "size": self.image.size,
        }


def fetch(spec: EmbeddedImage) -> Fetched:
    """The image a spec names, in the host's cache (registry pulls) or read where it lies."""
    if spec.kind is SourceKind.REGISTRY:
        ref = Reference.parse(spec.source)
        client = RegistryClient(ref.registry, credentials=oci_credentials.lookup(ref.registry))
        # One layout per repository: blobs shared by tags and rebuilds are fetched once.
        key = hashlib.sha256(f"{ref.registry}/{ref.repository}".encode()).hexdigest()[:24]
        image = pull(client, ref, cache_dir() / "images" / key)
        return Fetched(spec, image, image.digest)
    return Fetched(spec, read_image(Path(spec.source)), None)


def fetch_all(specs: tuple[EmbeddedImage, ...]) -> list[Fetched]:
    fetched = []
    for spec in specs:
        log.info("datastore image %s: from %s %s", spec.target, spec.kind, spec.source)
        fetched.append(fetch(spec))
    return fetched


def archive_name(index: int, fetched: Fetched) -> str:
    return f"{index:02d}-{fetched.image_id.removeprefix('sha256:')[:16]}.tar"


def write_archives(fetched: list[Fetched], work: Path) -> list[tuple[Path, str]]:
    """Each image as a `docker save` archive tagged with its target: (host path, its name)."""
    out = []
    for index, item in enumerate(fetched):
        name = archive_name(index, item)
        path = work / name
        write_docker_archive(item.image, [item.spec.target], path)
        out.append((path, name))
    return out
