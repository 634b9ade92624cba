"""Where the project keeps its caches and scratch space on the host."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/trove-image-assembler (or ~/.cache/...), created on demand."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(root) / "trove-image-assembler"
    path.mkdir(parents=True, exist_ok=True)
    return path
