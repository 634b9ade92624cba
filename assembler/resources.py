"""Files shipped with the project that go into images: overlays/ and cloudinit/ templates."""

from __future__ import annotations

from pathlib import Path
from string import Template

_PACKAGE = Path(__file__).resolve().parent
# In a wheel they are packaged under assembler/_data; in a checkout they sit at the top.
_ROOTS = (_PACKAGE / "_data", _PACKAGE.parent)


def resource(relative: str) -> Path:
    for root in _ROOTS:
        path = root / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"project resource {relative} is missing from the installation")


def resource_files(relative: str) -> list[Path]:
    """Every file under a resource directory (for the layer keys)."""
    for root in _ROOTS:
        path = root / relative
        if path.is_dir():
            return sorted(p for p in path.rglob("*") if p.is_file())
    raise FileNotFoundError(f"project resource {relative}/ is missing from the installation")


def render(relative: str, **values: str) -> str:
    """A template with ${name} placeholders; a missing value is an error, not an empty string."""
    return Template(resource(relative).read_text()).substitute(values)
