"""A layer's code identity, derived from what its steps import: no hand-kept list of files.

The modules that hold a layer's step functions are the roots; every `assembler` module they
import (statically, at any depth) is part of the layer's code, except the modules that cannot
shape an image's content (NEUTRAL): a change to the CLI's wording or to error messages keeps
every cached layer. Config parsing is neutral too, because a layer's key holds the parsed
values its steps read, never the parser.

Imports are read from the source with `ast`, so a module is counted whether or not it has been
imported in this process, and an edit to a file changes the digest without reloading anything.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PACKAGE = "assembler"
ROOT = Path(__file__).resolve().parent

# Modules that do not shape the image. Each with why; everything else a step reaches counts.
NEUTRAL: dict[str, str] = {
    "assembler.cli": "argument parsing and messages",
    "assembler.__main__": "the entry point",
    "assembler.errors": "exception types and their messages",
    "assembler.config": "parses options into BuildConfig; layers key on the parsed values",
    "assembler.cancel": "Ctrl-C handling",
    "assembler.paths": "where caches live, not what they hold",
    "assembler.run": "logs and runs a subprocess; what runs is the caller's",
}


def module_of(func: Callable[..., Any]) -> str:
    """The module defining a step (through functools.partial)."""
    while isinstance(func, functools.partial):
        func = func.func
    return str(func.__module__)


def module_path(name: str, root: Path | None = None) -> Path | None:
    """The source file of an `assembler` module or package, under root (the package's)."""
    root = root or ROOT
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str, root: Path | None = None) -> set[str]:
    """The `assembler` modules a module names in its imports (a `from x import y` names x.y
    when y is a module, else x)."""
    path = module_path(name, root)
    if path is None:
        return set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                source = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: they are code it runs too.
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if module_path(m, root) is not None}


def closure(roots: Iterable[str], root: Path | None = None) -> list[str]:
    """The roots and every module they import at any depth, neutral ones left out (and not
    followed: what only the CLI imports is not a step's code)."""
    seen: set[str] = set()
    todo = [r for r in roots if r not in NEUTRAL]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in imports_of(name, root) if m not in NEUTRAL and m not in seen)
    return sorted(seen)


def digest(modules: Iterable[str], files: Iterable[Path] = (), root: Path | None = None) -> str:
    """sha256 over the modules' names and sources and over extra files (what steps copy into
    the image), each named relative to the project."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        path = module_path(name, root)
        assert path is not None, name
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(files):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
