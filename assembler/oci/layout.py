"""One image on disk, whatever form it takes: the functions the rest of the tool uses.

Read from an OCI layout dir (ocidir.py) or a `docker save` tar (archive.py), written as
either, pulled from or pushed to a registry (transfer.py).
"""

from __future__ import annotations

from pathlib import Path

from assembler.oci.archive import read_docker_archive, write_docker_archive
from assembler.oci.image import Descriptor, Image, image_from_files
from assembler.oci.ocidir import read_oci_layout, write_oci_layout
from assembler.oci.transfer import pull, push
from assembler.oci.tree import malformed

__all__ = [
    "Descriptor",
    "Image",
    "image_from_files",
    "pull",
    "push",
    "read_docker_archive",
    "read_image",
    "read_oci_layout",
    "write_docker_archive",
    "write_oci_layout",
]


def read_image(path: Path, name: str | None = None) -> Image:
    """The image at path: an OCI layout dir, or a docker save (or OCI layout) tar."""
    if path.is_dir():
        return read_oci_layout(path, name)
    if path.is_file():
        return read_docker_archive(path, name)
    raise malformed(path, "no such file or directory")
