"""The layer tar is deterministic and the layout is a valid OCI image layout (fast, no build)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from assembler.errors import BuildError
from assembler.standin import STANDINS, build
from assembler.standin.layer import LAYER_MTIME, pack_layer
from assembler.standin.layout import add_layer, read_image, write_image


def _tree(root: Path, mtime: int) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "usr/bin/b").write_text("b")
    (root / "usr/bin/a").write_text("a" * 5000)
    os.link(root / "usr/bin/a", root / "usr/bin/a-again")
    (root / "usr/bin/link").symlink_to("/etc/passwd")  # absolute: must not be followed
    os.mkfifo(root / "fifo")
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chown(root / "usr/bin/b", 1001, 1001)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.utime(Path(dirpath) / name, (mtime, mtime), follow_symlinks=False)


def test_same_tree_same_bytes_whatever_the_times(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # Made in the opposite order on disk, at other times: only the content may count.
    _tree(one, 1_000_000)
    _tree(two, 2_000_000)
    blob1, blob2 = pack_layer(one, tmp_path / "1.tgz"), pack_layer(two, tmp_path / "2.tgz")
    assert (tmp_path / "1.tgz").read_bytes() == (tmp_path / "2.tgz").read_bytes()
    assert blob1 == blob2
    data = (tmp_path / "1.tgz").read_bytes()
    assert blob1.digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert blob1.diff_id == f"sha256:{hashlib.sha256(gzip.decompress(data)).hexdigest()}"
    assert blob1.size == len(data)


def test_entries_sorted_numeric_owners_fixed_mtime_no_devices(tmp_path: Path) -> None:
    _tree(tmp_path / "t", 1_000_000)
    pack_layer(tmp_path / "t", tmp_path / "l.tgz")
    with tarfile.open(tmp_path / "l.tgz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["dev", "fifo", "usr", "usr/bin", "usr/bin/a", "usr/bin/a-again",
                     "usr/bin/b", "usr/bin/link"]  # fmt: skip
    by_name = {m.name: m for m in members}
    assert by_name["usr/bin/a-again"].islnk() and by_name["usr/bin/a-again"].linkname == "usr/bin/a"
    assert by_name["usr/bin/link"].linkname == "/etc/passwd"
    assert by_name["fifo"].isfifo()
    assert (by_name["usr/bin/b"].uid, by_name["usr/bin/b"].gid) == (1001, 1001)
    assert all(m.mtime == LAYER_MTIME and m.uname == "" and m.gname == "" for m in members)


def test_layout_round_trip_and_labels(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t/f").write_text("x")
    blob = pack_layer(tmp_path / "t", tmp_path / "l.tgz")
    out = tmp_path / "layout"
    add_layer(out, tmp_path / "l.tgz", blob)
    spec = STANDINS["mariadb"]
    config = build.image_config(spec, [blob], "1:10.11.19-0+deb12u1")
    digest = write_image(out, config, [blob], spec.tag, {"a": "b"})
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "10.11"}
    for path in (out / "blobs/sha256").iterdir():  # every blob is named by its content
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    image = read_image(out)
    assert image.layers == [blob]
    got = image.config["config"]
    assert got["Entrypoint"] == ["docker-entrypoint.sh"] and got["ExposedPorts"] == {"3306/tcp": {}}
    assert "TEST DOUBLE" in got["Labels"]["org.opencontainers.image.description"]
    assert (image.config["architecture"], image.config["os"]) == ("amd64", "linux")


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_names_say_test_double(name: str) -> None:
    spec = STANDINS[name]
    assert spec.repository.startswith("trove-test-double/")
    assert spec.description.startswith("TEST DOUBLE of the official ")


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # A closed loopback port as the mirror: debootstrap fails at once.
    with pytest.raises(BuildError, match="debootstrap"):
        build.standin_layout("postgresql", mirror="http://127.0.0.1:9/debian")
    cache = tmp_path / "trove-image-assembler"
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    # This process's run directory stays, empty, until it exits (leftovers.release).
    run = f"run/{os.getpid()}"
    assert [p for p in left if not p.endswith(".lock")] == ["run", run, "standins"]


def test_cached_layout_is_reused(postgresql_layout: Path) -> None:
    assert build.standin_layout("postgresql") == postgresql_layout
    key = build.standin_key(STANDINS["postgresql"], "http://deb.debian.org/debian")
    assert postgresql_layout.name == f"postgresql-{key[:16]}"
    # Another mirror is another image.
    assert build.standin_key(STANDINS["postgresql"], "http://127.0.0.1:9/debian") != key


def test_racing_processes_build_once(
    postgresql_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes want the broken variant at once: one builds it, the other waits and reuses."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    standins = tmp_path / "trove-image-assembler/standins"
    standins.mkdir(parents=True)
    # The parent image as this machine has it, hard-linked: only the variant is built here.
    subprocess.run(["cp", "-al", postgresql_layout, standins / postgresql_layout.name], check=True)
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from assembler.standin import standin_layout\n"
        "print(standin_layout('postgresql-broken'))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert results[0][0] == results[1][0]
    assert sum("stand-in postgresql-broken built in" in err for _, err in results) == 1
    assert len(list(standins.glob("postgresql-broken-*[!k]"))) == 1  # one layout, no temp dirs
    assert not list(standins.glob(".*.tmp"))
