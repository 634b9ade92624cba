"""Every fast path builds the same guest filesystem as a cold build: files and their metadata
compared (not the disk's bytes, which differ with allocation order and timestamps).

The cold build runs with our caches empty but the base and the agent's wheels; the second with
the base's facts and the host's packages it left (the host fetches while the appliance starts)
in a layer cache of its own; then an unchanged rebuild takes its output from the cache."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest

from assembler.paths import cache_dir
from tests.builds import Inspector, build

pytestmark = [pytest.mark.image, pytest.mark.full]

KEPT = ("bases", "wheelhouses", "agent")
# What differs between any two builds by nature: when things ran, not what the image holds.
VOLATILE_PREFIXES = ("/var/log/", "/var/cache/debconf/", "/var/cache/ldconfig/")
VOLATILE = {"/var/lib/dpkg/status-old", "/var/lib/dpkg/diversions-old", "/etc/shadow-"}


def fresh_xdg(root: Path) -> dict[str, str]:
    ours = root / "trove-image-assembler"
    ours.mkdir(parents=True)
    for name in KEPT:
        if (cache_dir() / name).exists():
            (ours / name).symlink_to(cache_dir() / name)
    return {"XDG_CACHE_HOME": str(root)}


def tree(g: object, image: Path) -> dict[str, tuple[str, ...]]:
    """path -> (type, mode, uid, gid, size, link target, md5) for every file of the root fs."""
    listing = g.sh(  # type: ignore[attr-defined]
        "find / -xdev -printf '%p\\t%y\\t%m\\t%U\\t%G\\t%s\\t%l\\n' | gzip -1 | base64 -w0"
    )
    meta = {}
    for line in gzip.decompress(base64.b64decode(listing)).decode().splitlines():
        path, *rest = line.split("\t")
        if not path.startswith(VOLATILE_PREFIXES) and path not in VOLATILE:
            meta[path] = tuple(rest)
    sums = image.with_suffix(".md5")
    g.checksums_out("md5", "/", str(sums))  # type: ignore[attr-defined]
    for line in sums.read_text(errors="surrogateescape").splitlines():
        digest, path = line.split(None, 1)
        path = "/" + path.lstrip("./") if not path.startswith("/") else path
        if path in meta:
            meta[path] = (*meta[path], digest)
    return meta


def test_fast_paths_build_the_guest_filesystem_a_cold_build_does(
    debian_base: Path, tmp_path: Path, inspect: Inspector
) -> None:
    env = fresh_xdg(tmp_path / "xdg")
    common = ("--no-dev-mode", "--size", "5G")
    cold = build(
        debian_base, tmp_path / "cold.qcow2", *common, "--layer-cache", str(tmp_path / "lc1"),
        env=env,
    )  # fmt: skip
    fast = build(
        debian_base, tmp_path / "fast.qcow2", *common, "--layer-cache", str(tmp_path / "lc2"),
        env=env,
    )  # fmt: skip
    steps = {s["name"]: s["seconds"] for s in fast.manifest["steps"]}
    assert steps["inspect"] < 1 and steps["learn-base"] < 1  # the base's facts from the cache
    assert steps["packages-fetch"] < 1  # fetched while the appliance started
    again = build(
        debian_base, tmp_path / "again.qcow2", *common, "--layer-cache", str(tmp_path / "lc2"),
        env=env,
    )  # fmt: skip
    assert "output from the cache" in again.stderr
    assert again.image.read_bytes() == fast.image.read_bytes()
    a = tree(inspect(cold.image, "qcow2"), cold.image)
    b = tree(inspect(fast.image, "qcow2"), fast.image)
    only_cold, only_fast = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    differ = sorted(p for p in a.keys() & b.keys() if a[p] != b[p])
    assert (only_cold, only_fast, differ[:50]) == ([], [], [])
    assert len(a) > 10_000
