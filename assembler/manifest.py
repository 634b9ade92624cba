"""The manifest next to every image: what went in, how long each step took, what came out."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assembler import leftovers

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


@dataclass
class StepRecord:
    name: str
    seconds: float


@dataclass
class Manifest:
    inputs: dict[str, Any]
    base: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    packages: dict[str, str] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    # Later issues fill these; the boot test reads them (no agent -> "not applicable").
    agent: dict[str, Any] | None = None
    private_keys: list[str] = field(default_factory=list)
    # The layer cache: each layer's key, whether this build reused it, and its steps if not.
    layers: list[dict[str, Any]] = field(default_factory=list)
    # Embedded datastore images: target name, source, digests (never a credential).
    datastore_images: list[dict[str, Any]] = field(default_factory=list)
    # What the image boots with, "bios" and/or "uefi", read from its disk.
    firmware: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        from assembler import __version__

        doc = {
            "tool": {"name": "trove-image-assembler", "version": __version__},
            "inputs": self.inputs,
            "base": self.base,
            "layers": [{k: v for k, v in layer.items() if k != "steps"} for layer in self.layers],
            "steps": [{"name": s.name, "seconds": round(s.seconds, 2)} for s in self.steps],
            "packages": dict(sorted(self.packages.items())),
            "agent": self.agent,
            "private_keys": self.private_keys,
            "datastore_images": self.datastore_images,
            "firmware": self.firmware,
            "output": self.output,
        }
        # default=str: paths and enums among the inputs
        return json.dumps(doc, indent=2, default=str) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = leftovers.partial(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
