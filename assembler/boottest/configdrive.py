"""A Nova-style config drive: an ISO 9660 volume labelled config-2, built in Python."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib

from assembler.boottest.instance import Instance, openstack_tree

LABEL = "config-2"


def build_config_drive(inst: Instance, output: Path) -> None:
    """Write the instance's openstack/ tree to an ISO the guest finds by its label.

    ISO 9660 names are 8.3 upper case, so every entry gets a short name and carries its real
    name in Rock Ridge (what Linux reads) and Joliet.
    """
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    short_names: dict[str, str] = {}  # real path -> ISO path

    def ensure_dir(real: str) -> str:
        if real in ("", "/"):
            return ""
        if real in short_names:
            return short_names[real]
        parent, _, name = real.rpartition("/")
        iso_parent = ensure_dir(parent)
        iso_path = f"{iso_parent}/D{len(short_names):06d}"
        iso.add_directory(iso_path, rr_name=name, joliet_path=real)
        short_names[real] = iso_path
        return iso_path

    try:
        for rel, body in sorted(openstack_tree(inst).items()):
            real = f"/openstack/{rel}"
            parent, _, name = real.rpartition("/")
            iso_parent = ensure_dir(parent)
            iso_path = f"{iso_parent}/F{len(short_names):06d}.;1"
            short_names[real] = iso_path
            iso.add_fp(io.BytesIO(body), len(body), iso_path, rr_name=name, joliet_path=real)
        tmp = output.with_name(output.name + ".partial")
        iso.write(str(tmp))
        tmp.replace(output)
    finally:
        iso.close()
