"""One real build shared through a registry (docker-registry on 127.0.0.1): a second runner with
empty caches (layers, packages, base, wheels) pulls every layer and the base the first pushed,
builds none of them, and writes the same image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from assembler.boottest.registry import Registry
from tests.builds import Built, run_cli

pytestmark = [
    pytest.mark.image,
    pytest.mark.registry,
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry"),
]


def manifest_of(out: Path) -> dict[str, Any]:
    return json.loads(out.with_name(out.name + ".manifest.json").read_text())


def production_from_archive_base(built: Built, out: Path) -> list[str]:
    """The fixture's build in production mode (a dev image's agent layer holds its key pair:
    never shared), from `--base archive` (the base this machine made from Debian's archive,
    the one the fixture was given by path), writing `out`."""
    argv = built.args_to(out)
    argv[argv.index("--base") + 1] = "archive"
    return [*argv, "--no-dev-mode"]


def test_a_runner_with_empty_caches_builds_nothing_another_pushed(
    qcow2_custom: Built, tmp_path: Path
) -> None:
    with Registry() as registry:
        where = f"{registry.host}/fleet/layers"
        # Runner one: this machine, its caches warm from the fixture's build (the same system
        # and config layers); it builds the production agent layer, then pushes the chain.
        one_out = tmp_path / "one" / "image.qcow2"
        one_out.parent.mkdir()
        one = run_cli(*production_from_archive_base(qcow2_custom, one_out), "--cache-registry", where,
                      env=qcow2_custom.env)  # fmt: skip
        assert one.returncode == 0, one.stderr[-3000:]
        first = manifest_of(one_out)
        assert [x["from"] for x in first["layers"]] == ["cache", "cache", "build"]
        assert "base " in one.stderr and "pushed to" in one.stderr
        # Runner two: nothing of its own but the registry.
        empty = tmp_path / "two-caches"
        env = {
            **qcow2_custom.env,
            "XDG_CACHE_HOME": str(empty / "xdg"),
            "ASSEMBLER_LAYER_CACHE": str(empty / "layers"),
            "ASSEMBLER_CACHE_REGISTRY": where,
        }
        two_out = tmp_path / "two" / "image.qcow2"
        two_out.parent.mkdir()
        two = run_cli(*production_from_archive_base(qcow2_custom, two_out), env=env)
        assert two.returncode == 0, two.stderr[-3000:]
        second = manifest_of(two_out)
    # Every layer came from the registry, none was built: no appliance step ran.
    assert [x["from"] for x in second["layers"]] == ["registry"] * 3
    assert [x["key"] for x in second["layers"]] == [x["key"] for x in first["layers"]]
    assert [s["name"] for s in second["steps"]] == ["convert"]
    assert "base " in two.stderr and "pulled from" in two.stderr
    assert second["base"]["sha256"] == first["base"]["sha256"]
    # The same image, bit for bit, and the built-at times of the layers it was made of.
    assert second["output"]["sha256"] == first["output"]["sha256"]
    assert [x["built_at"] for x in second["layers"]] == [x["built_at"] for x in first["layers"]]
    # Nothing of the pull left beside the caches.
    assert not list(empty.rglob("*.partial*")) and not list(empty.rglob("pull-*"))
