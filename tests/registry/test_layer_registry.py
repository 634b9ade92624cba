"""Layers shared through a real docker-registry (distribution 2.8) on 127.0.0.1, between layer
caches in separate directories. The layers are synthetic (qemu-img overlays written by qemu-io,
as in tests/unit/test_layer_cache.py): the registry sees exactly what a build would give it,
at a fraction of the cost. One real build shares its layers in tests/image/test_fleet_build.py.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import shutil
import subprocess
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from assembler.boottest.registry import Registry
from assembler.errors import UsageError
from assembler.fleet import artifact
from assembler.fleet.remote import LayerRegistry, parse_location
from assembler.layers import Entry, LayerCache, Parent
from assembler.oci.registry import RegistryClient
from tests.unit.test_layer_cache import Writer, qemu_io, reads

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry"),
]


@pytest.fixture(scope="module")
def registry() -> Any:
    with Registry() as r:
        yield r


_repos = iter(range(10_000))


@pytest.fixture
def where(registry: Registry) -> str:
    """A repository of its own for each test: nothing one test pushed is found by another."""
    return f"{registry.host}/fleet-test/layers-{next(_repos)}"


def make_base(directory: Path) -> Parent:
    """The same base content in any directory (as every runner downloads the same image)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    assert qemu_io(path, "write -P 0x11 0 64k").returncode == 0
    return Parent(path, "qcow2", "b" * 64)


def build_chain(
    cache: LayerCache, base: Parent, shared: LayerRegistry | None, a: Writer, b: Writer, **opts: Any
) -> list[tuple[Entry, bool]]:
    """Layers a then b, with the registry as the cache's second level (as a build does)."""
    remote = shared.remote_for(cache) if shared else None
    with ExitStack() as held:
        ea = held.enter_context(cache.layer("a", base, {"x": 1}, a, remote=remote, **opts))
        parent = Parent(cache.overlay(ea[0]), "qcow2", ea[0].ident)
        eb = held.enter_context(cache.layer("b", parent, {"y": 1}, b, remote=remote))
        return [ea, eb]


def test_a_second_runner_pulls_what_the_first_pushed(where: str, tmp_path: Path) -> None:
    one = LayerCache(tmp_path / "one" / "layers")
    base1 = make_base(tmp_path / "one" / "base")
    first = LayerRegistry.at(where)
    (ea, _), (eb, _) = build_chain(one, base1, first, Writer(0x41, 1), Writer(0x42, 2))
    first.push(one, [ea, eb], None)
    assert first.enabled and first.pushed == [f"a {ea.key[:12]}", f"b {eb.key[:12]}"]

    two = LayerCache(tmp_path / "two" / "layers")  # another runner: its own, empty cache
    base2 = make_base(tmp_path / "two" / "elsewhere")
    second = LayerRegistry.at(where)
    a, b = Writer(0x41, 1), Writer(0x42, 2)
    (pa, hit_a), (pb, hit_b) = build_chain(two, base2, second, a, b)
    assert (a.calls, b.calls) == (0, 0) and (hit_a, hit_b) == (True, True)
    assert second.pulled == {ea.key, eb.key}
    # The same layers, byte for byte, and they work here: relative backing names.
    assert (pa.ident, pb.ident) == (ea.ident, eb.ident)
    assert [pa.sha256, pb.sha256] == [ea.sha256, eb.sha256]
    assert pb.created == eb.created and pb.record == eb.record
    top = two.overlay(pb)
    assert reads(top, 0x11, 0) and reads(top, 0x41, 1) and reads(top, 0x42, 2)
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "--backing-chain", top],
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    assert [i.get("backing-filename") for i in info] == [f"{ea.ident}.qcow2", base2.file_name, None]
    assert Path(info[-1]["filename"]).resolve() == base2.path.resolve()
    # Nothing more to push: the registry has every layer of this chain.
    second.push(two, [pa, pb], None)
    assert second.pushed == []


def test_the_manifest_lists_the_chain_with_its_annotations(
    where: str, registry: Registry, tmp_path: Path
) -> None:
    cache = LayerCache(tmp_path / "layers")
    shared = LayerRegistry.at(where)
    (ea, _), (eb, _) = build_chain(cache, make_base(tmp_path), shared, Writer(1, 1), Writer(2, 2))
    shared.push(cache, [ea, eb], None)
    host, repository = parse_location(where)
    with RegistryClient(host) as client:
        fetched = client.raw_manifest(repository, eb.key)
    doc = json.loads(fetched.body)
    assert doc["artifactType"] == artifact.LAYER_ARTIFACT
    assert doc["config"]["digest"] == artifact.EMPTY_DIGEST
    kinds = [d["mediaType"] for d in doc["layers"]]
    disk = artifact.disk_type("qcow2")
    assert kinds == [artifact.ENTRY, disk, artifact.ENTRY, disk]
    titles = [d.get("annotations", {}).get(artifact.TITLE) for d in doc["layers"]]
    assert titles == [None, f"{ea.ident}.qcow2", None, f"{eb.ident}.qcow2"]
    notes = doc["annotations"]
    assert notes[artifact.KEY] == eb.key and notes[artifact.KIND] == "b"
    assert notes[artifact.PARENT] == ea.ident and notes[artifact.GENERATION] == eb.generation
    assert notes[artifact.TOOL] and notes[artifact.BUILDER]
    assert artifact.parse(fetched.body, "x").created == pytest.approx(eb.created, abs=1e-5)
    # The pushed entry names no path of the machine that built it.
    with RegistryClient(host) as client:
        client.blob(repository, doc["layers"][2]["digest"], tmp_path / "entry.json")
    pushed = json.loads((tmp_path / "entry.json").read_text())
    assert pushed["parent_path"] == "" and str(tmp_path) not in json.dumps(pushed)
    # Compressed for transfer: the overlay's blob is a zstd stream, smaller than the file.
    assert doc["layers"][3]["size"] < cache.overlay(eb).stat().st_size


def test_a_pulled_layer_keeps_its_build_time_for_max_age(where: str, tmp_path: Path) -> None:
    one = LayerCache(tmp_path / "one")
    shared = LayerRegistry.at(where)
    (ea, _), (eb, _) = build_chain(one, make_base(tmp_path / "b1"), shared, Writer(1, 1),
                                   Writer(2, 2), ages=True)  # fmt: skip
    shared.push(one, [ea, eb], None)
    two = LayerCache(tmp_path / "two")
    again = LayerRegistry.at(where)
    a = Writer(1, 1)
    # A layer of packages older than --max-age is built again, wherever it was found.
    (na, _hit), _ = build_chain(two, make_base(tmp_path / "b2"), again, a, Writer(2, 2),
                               ages=True, max_age_days=0)  # fmt: skip
    assert a.calls == 1 and ea.key not in again.pulled and na.generation != ea.generation


def test_a_damaged_blob_is_refused_and_the_layer_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A registry of its own: blobs are stored once per registry, and equal overlays (these
    # synthetic ones are) are one blob; the damage must not reach the other tests.
    with Registry() as registry:
        _damaged_blob(f"{registry.host}/fleet/layers", registry, tmp_path, caplog)


def _damaged_blob(
    where: str, registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = LayerCache(tmp_path / "one")
    shared = LayerRegistry.at(where)
    (ea, _), (eb, _) = build_chain(one, make_base(tmp_path / "b1"), shared, Writer(1, 1),
                                   Writer(2, 2))  # fmt: skip
    shared.push(one, [ea, eb], None)
    host, repository = parse_location(where)
    with RegistryClient(host) as client:
        doc = json.loads(client.raw_manifest(repository, ea.key).body)
    digest = doc["layers"][-1]["digest"].split(":")[1]
    blob = registry.storage / f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte on the registry's disk
    blob.write_bytes(bytes(data))
    two = LayerCache(tmp_path / "two")
    again = LayerRegistry.at(where)
    a = Writer(1, 1)
    with caplog.at_level(logging.WARNING):
        (_na, _), (nb, _) = build_chain(two, make_base(tmp_path / "b2"), again, a, Writer(2, 2))
    assert a.calls == 1 and again.pulled == set()
    assert "digest mismatch" in caplog.text and "going on without it" in caplog.text
    assert reads(two.overlay(nb), 0x1, 1) and reads(two.overlay(nb), 0x2, 2)
    assert not list(two.root.glob(".*partial*"))


def test_an_overlay_naming_another_backing_file_is_refused(
    where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A layer someone pushed with an absolute backing file (a path on their machine, or a
    file of ours it has no business reading) is never adopted."""
    one = LayerCache(tmp_path / "one")
    base = make_base(tmp_path / "b1")
    (ea, _), _ = build_chain(one, base, None, Writer(1, 1), Writer(2, 2))
    overlay = one.overlay(ea)
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", "/etc/hostname", overlay],
                   check=True)  # fmt: skip
    from assembler.fleet.transfer import sha256_file

    shared = LayerRegistry.at(where)
    shared.push(one, [replace(ea, sha256=sha256_file(overlay))], None)
    assert shared.pushed
    two = LayerCache(tmp_path / "two")
    again = LayerRegistry.at(where)
    a = Writer(1, 1)
    with caplog.at_level(logging.WARNING):
        build_chain(two, make_base(tmp_path / "b2"), again, a, Writer(2, 2))
    assert a.calls == 1 and again.pulled == set()
    assert "'/etc/hostname'" in caplog.text


def _race(where: str, root: str, pattern: int, start: Any) -> list[str]:
    cache = LayerCache(Path(root) / "layers")
    base = make_base(Path(root) / "base")
    shared = LayerRegistry.at(where)
    chain = [e for e, _ in build_chain(cache, base, shared, Writer(1, 1), Writer(pattern, 2))]
    start.wait()  # both push at once
    shared.push(cache, chain, None)
    assert shared.enabled
    return [e.ident for e in chain]


def test_two_runners_pushing_one_key_both_end_with_a_correct_chain(
    where: str, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        results = [
            pool.apply_async(_race, (where, str(tmp_path / f"r{i}"), 0x42, start)) for i in (1, 2)
        ]
        chains = [r.get(timeout=120) for r in results]
    # Each built its own generation of a (the same key): b's keys differ with it.
    assert chains[0][0].split(".")[0] == chains[1][0].split(".")[0]
    assert chains[0] != chains[1]
    # A third runner gets whichever a the tag names, and the b built on exactly that one.
    three = LayerCache(tmp_path / "r3")
    third = LayerRegistry.at(where)
    a, b = Writer(1, 1), Writer(0x42, 2)
    (pa, _), (pb, _) = build_chain(three, make_base(tmp_path / "b3"), third, a, b)
    assert (a.calls, b.calls) == (0, 0)
    assert [pa.ident, pb.ident] in chains
    assert reads(three.overlay(pb), 0x1, 1) and reads(three.overlay(pb), 0x42, 2)
    # And the loser's b is whole too: its manifest lists the a it lies on, by digest.
    host, repository = parse_location(where)
    with RegistryClient(host) as client:
        for ids in chains:
            key = ids[1].split(".")[0]
            doc = artifact.parse(client.raw_manifest(repository, key).body, key)
            assert doc.layers[1].annotations[artifact.TITLE] == f"{ids[0]}.qcow2"
            for d in doc.layers:
                assert client.has_blob(repository, d.digest)


def test_an_unreachable_registry_is_a_warning_and_the_build_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.publish.glance_service import free_port

    shared = LayerRegistry.at(f"127.0.0.1:{free_port()}/fleet/layers")
    with caplog.at_level(logging.WARNING):
        shared.check()
    assert not shared.enabled
    assert "unreachable" in caplog.text and "going on without it" in caplog.text
    cache = LayerCache(tmp_path / "layers")
    a = Writer(1, 1)
    (ea, hit), _ = build_chain(cache, make_base(tmp_path), shared, a, Writer(2, 2))
    assert a.calls == 1 and not hit
    shared.push(cache, [ea], None)  # nothing, quietly


def test_a_login_comes_from_docker_s_config_and_never_reaches_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import base64

    with Registry(users={"ci": "fleet-s3cret"}) as secured:
        where = f"{secured.host}/fleet/layers"
        cache = LayerCache(tmp_path / "layers")
        chain = [e for e, _ in build_chain(cache, make_base(tmp_path), None, Writer(1, 1),
                                           Writer(2, 2))]  # fmt: skip
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nologin"))
        anonymous = LayerRegistry.at(where)
        with caplog.at_level(logging.WARNING):
            anonymous.push(cache, chain, None)
        assert not anonymous.enabled and "requires a login" in caplog.text
        config = tmp_path / "docker"
        config.mkdir()
        auth = base64.b64encode(b"ci:fleet-s3cret").decode()
        (config / "config.json").write_text(json.dumps({"auths": {secured.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            logged_in = LayerRegistry.at(where)
            logged_in.push(cache, chain, None)
        assert logged_in.enabled and len(logged_in.pushed) == 2
        assert "fleet-s3cret" not in caplog.text and auth not in caplog.text
        # Anonymous reads are refused too: the layers stay the fleet's.
        response = requests.get(f"http://{secured.host}/v2/fleet/layers/tags/list", timeout=10)
        assert response.status_code == 401


def test_a_location_with_a_tag_or_without_a_repository_is_bad_input() -> None:
    for text in ("127.0.0.1:5000", "127.0.0.1:5000/layers:latest", "127.0.0.1:5000/l@sha256:0"):
        with pytest.raises(UsageError):
            parse_location(text)
    assert parse_location("127.0.0.1:5000/fleet/layers") == ("127.0.0.1:5000", "fleet/layers")


def test_prune_deletes_the_older_generations_of_a_slot_and_leaves_others_alone(
    where: str, tmp_path: Path
) -> None:
    from assembler.fleet.prune import listing, prune

    cache = LayerCache(tmp_path / "layers")
    base = make_base(tmp_path)
    shared = LayerRegistry.at(where)
    pushed = []
    for refresh in (False, True):  # a rebuild of the same layers: a new generation of each
        chain = [e for e, _ in build_chain(cache, base, None, Writer(1, 1), Writer(2, 2),
                                           ages=True, refresh=refresh)]  # fmt: skip
        shared.push(cache, chain, None, {"a": "SLOT-A", "b": "SLOT-B"})
        pushed.append(chain)
    host, repository = parse_location(where)
    # Something else in the repository, not one of ours: never touched.
    with RegistryClient(host) as client:
        client.push_blob(repository, artifact.EMPTY_DIGEST, 2, lambda: io.BytesIO(b"{}"))
        foreign = json.dumps({"schemaVersion": 2, "mediaType": artifact.MANIFEST, "config": {
            "mediaType": artifact.EMPTY, "digest": artifact.EMPTY_DIGEST, "size": 2},
            "layers": []}).encode()  # fmt: skip
        client.push_manifest(repository, "someone-else", artifact.MANIFEST, foreign)
    assert {f.tag for f in listing(shared)} == {e.key for c in pushed for e in c}
    (old_a, old_b), (new_a, new_b) = pushed
    assert old_a.key == new_a.key  # one key, one tag: the rebuild replaced it
    # b's newest stays, with the a it lies on; the older b goes.
    gone = prune(shared, {"SLOT-B"}, set(), keep=1)
    assert {f.tag for f in gone} == {old_b.key}
    # A matrix without b any more: every b goes, a stays.
    assert {f.tag for f in prune(shared, {"SLOT-A"}, set(), keep=1)} == {new_b.key}
    with RegistryClient(host) as client:
        assert client.find_manifest(repository, new_a.key) is not None
        assert client.find_manifest(repository, new_b.key) is None
        assert client.find_manifest(repository, old_b.key) is None
        assert client.find_manifest(repository, "someone-else") is not None
