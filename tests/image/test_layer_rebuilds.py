"""The layer cache in real builds: the session's builds share one layer cache (tests/conftest.py),
so these rebuild against what the other image tests built, and check which layers the real
build made again and which it took from the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.builds import Built, Inspector, build

pytestmark = pytest.mark.image

LAUNCH = "launching the libguestfs appliance"
OTHER_AGENT = "25.1.0"


def layers(built: Built) -> dict[str, dict[str, Any]]:
    return {layer["name"]: layer for layer in built.manifest["layers"]}


def rebuild(original: Built, out: Path, *extra: str) -> Built:
    """original's build again (its options and environment), to another output."""
    args = list(original.args)
    base = Path(args[args.index("--base") + 1])
    # tests.builds.build puts the release, base and output first, the build's options after.
    options = args[args.index("-o") + 2 :]
    return build(base, out, *options, *extra, env=original.env)


def test_a_dev_build_reuses_the_production_build_s_system_layer(
    raw_production: Built, vmdk_dev: Built
) -> None:
    prod, dev = layers(raw_production), layers(vmdk_dev)
    assert prod["system"]["key"] == dev["system"]["key"]
    assert prod["system"]["generation"] == dev["system"]["generation"]
    # The production build sets a root password (config) and is not in dev mode (agent).
    assert prod["config"]["key"] != dev["config"]["key"]
    assert prod["agent"]["key"] != dev["agent"]["key"]
    # Whichever ran second took the system layer from the cache and built the rest.
    second = dev if dev["system"]["cached"] else prod
    assert second["system"]["cached"]
    assert not second["config"]["cached"] and not second["agent"]["cached"]


def test_the_custom_build_shares_the_system_layer(
    raw_production: Built, qcow2_custom: Built
) -> None:
    # Another user, datasources and etc-hosts are config: the packages are built once.
    assert layers(qcow2_custom)["system"]["key"] == layers(raw_production)["system"]["key"]
    assert layers(qcow2_custom)["config"]["key"] != layers(raw_production)["config"]["key"]


@pytest.mark.full
def test_another_disk_size_builds_its_own_system_layer(qcow2_custom: Built, tmp_path: Path) -> None:
    small = rebuild(qcow2_custom, tmp_path / "small.qcow2", "--size", "4G")
    assert layers(small)["system"]["key"] != layers(qcow2_custom)["system"]["key"]
    assert not layers(small)["system"]["cached"]
    assert small.manifest["output"]["virtual_size"] == 4 * 1024**3


def test_an_unchanged_rebuild_launches_no_appliance(raw_production: Built, tmp_path: Path) -> None:
    again = rebuild(raw_production, tmp_path / "again.raw")
    assert LAUNCH not in again.stderr
    assert all(layer["cached"] for layer in again.manifest["layers"])
    assert [layer["key"] for layer in again.manifest["layers"]] == [
        layer["key"] for layer in raw_production.manifest["layers"]
    ]
    assert [s["name"] for s in again.manifest["steps"]] == ["convert"]
    # The same image, byte for byte where it matters: every block of the disk.
    compare = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", raw_production.image, again.image],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    # The manifest still says what is in it: packages and agent from the cached layers.
    assert again.manifest["packages"] == raw_production.manifest["packages"]
    assert again.manifest["agent"] == raw_production.manifest["agent"]
    # No convert: the output kept from the first build, copied and checked.
    assert "output from the cache" in again.stderr
    assert again.manifest["output"]["sha256"] == raw_production.manifest["output"]["sha256"]


def test_a_damaged_kept_output_is_converted_again(raw_production: Built, tmp_path: Path) -> None:
    """The kept output is a hard link to the first build's: replaced here by a damaged copy
    (so the session's image stays whole), it must be caught and the output converted anew."""
    outputs = Path(os.environ["ASSEMBLER_LAYER_CACHE"]) / "outputs"
    inode = raw_production.image.stat().st_ino
    kept = [p for p in outputs.glob("*.img") if p.stat().st_ino == inode]
    assert len(kept) == 1
    damaged = tmp_path / "damaged.img"
    shutil.copyfile(kept[0], damaged)
    with damaged.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"not the image")
    os.replace(damaged, kept[0])
    again = rebuild(raw_production, tmp_path / "again.raw")
    assert LAUNCH not in again.stderr and "output from the cache" not in again.stderr
    assert "damaged" in again.stderr
    assert again.manifest["output"]["sha256"] == raw_production.manifest["output"]["sha256"]


def test_another_agent_rebuilds_only_the_guest_layer(
    raw_production: Built, tmp_path: Path, inspect: Inspector
) -> None:
    out = tmp_path / "other-agent.qcow2"
    other = rebuild(raw_production, out, "--agent-version", OTHER_AGENT)
    before, after = layers(raw_production), layers(other)
    for name in ("system", "config"):
        assert after[name]["cached"] and after[name]["key"] == before[name]["key"]
    assert not after["agent"]["cached"] and after["agent"]["key"] != before["agent"]["key"]
    assert other.stderr.count(LAUNCH) == 1
    names = [s["name"] for s in other.manifest["steps"]]
    assert "packages" not in names and "hygiene" not in names and "agent-venv" in names
    assert other.manifest["agent"]["version"] == OTHER_AGENT
    g = inspect(out, "qcow2")
    site = "/opt/guest-agent-venv/lib/python3.11/site-packages"
    assert g.is_dir(f"{site}/trove-{OTHER_AGENT}.dist-info")
    assert not g.is_dir(f"{site}/trove-{raw_production.manifest['agent']['version']}.dist-info")
    # What the system layer installed is all there, from the cache.
    assert g.is_file("/usr/sbin/dockerd")
    assert other.manifest["packages"] == raw_production.manifest["packages"]
    # The qcow2 is the agent layer laid over the compressed flattening of the layers below.
    assert STACKED in other.stderr
    assert_reads_as_its_chain(other)


STACKED = "top layer laid over the kept lower layers"
FLATTENING = "flattening the layers below the top"


def assert_reads_as_its_chain(built: Built) -> None:
    top = layers(built)["agent"]
    chain = Path(os.environ["ASSEMBLER_LAYER_CACHE"]) / f"{top['key']}.{top['generation']}.qcow2"
    compare = subprocess.run(["qemu-img", "compare", "-q", chain, built.image], check=False)
    assert compare.returncode == 0, f"{built.image} does not read as the layers it came from"


def kept(layer_ident: str) -> list[Path]:
    """The output cache's images made from the layer `layer_ident`."""
    outputs = Path(os.environ["ASSEMBLER_LAYER_CACHE"]) / "outputs"
    return [
        meta.with_suffix(".img")
        for meta in outputs.glob("*.json")
        if json.loads(meta.read_text())["layer"] == layer_ident
    ]


def test_the_kept_lower_flattening_is_reused_and_checked(
    raw_production: Built, tmp_path: Path
) -> None:
    """With the finished output gone from the cache, the same build lays the agent layer over
    the kept lower flattening (no flattening again); a damaged one is caught and made anew."""
    first = rebuild(raw_production, tmp_path / "first.qcow2", "--agent-version", OTHER_AGENT)
    *_, below, agent = first.manifest["layers"]
    for image in kept(f"{agent['key']}.{agent['generation']}"):
        image.unlink()  # the finished output: this build must lay the top over again
    again = rebuild(raw_production, tmp_path / "again.qcow2", "--agent-version", OTHER_AGENT)
    assert LAUNCH not in again.stderr
    assert STACKED in again.stderr and FLATTENING not in again.stderr
    assert_reads_as_its_chain(again)

    (lower,) = kept(f"{below['key']}.{below['generation']}")
    damaged = tmp_path / "damaged.img"
    shutil.copyfile(lower, damaged)
    with damaged.open("r+b") as f:
        f.seek(3 << 20)
        f.write(b"flipped")
    os.replace(damaged, lower)
    for image in kept(f"{agent['key']}.{agent['generation']}"):
        image.unlink()
    third = rebuild(raw_production, tmp_path / "third.qcow2", "--agent-version", OTHER_AGENT)
    assert "damaged" in third.stderr and FLATTENING in third.stderr and STACKED in third.stderr
    assert_reads_as_its_chain(third)
