"""Which layer each kind of build input belongs to: a change must make exactly the right layer's
key change (and so everything above it), and nothing else. The real builds in
tests/image/test_layer_rebuilds.py show the cache acting on these keys."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from assembler import build, codeid, stack
from assembler.agent.devkeys import KeyPair
from assembler.agent.wheelhouse import Wheel, Wheelhouse
from assembler.config import BuildConfig, BuildOptions, make_config
from assembler.facts import Facts
from assembler.layers import layer_key


def wheelhouse(version: str = "26.0.0", digest: str = "a" * 64) -> Wheelhouse:
    """Data only: what a built wheelhouse records (its wheels' names and hashes)."""
    wheel = Wheel(Path(f"/w/trove-{version}-py3-none-any.whl"), "trove", version, digest, 1)
    return Wheelhouse(
        directory=Path("/w"),
        key=f"trove-{version}-cp311-x86_64-0",
        agent_name="trove",
        agent_version=version,
        agent_source=f"PyPI trove=={version}",
        python="3.11",
        glibc="2.36",
        arch="x86_64",
        constraints=None,
        constraints_sha256=None,
        wheels=(wheel,),
    )


def config(env: dict[str, str] | None = None, **opts: Any) -> BuildConfig:
    options = BuildOptions(
        **{"guest_os": "debian", "release": "bookworm", "output": "/tmp/x.qcow2", **opts}
    )
    return make_config(options, {"HOST_SCP_USERNAME": "stack", **(env or {})})


def keys(
    cfg: BuildConfig, house: Wheelhouse | None = None, dev_key: KeyPair | None = None
) -> tuple[str, str, str]:
    """(system, config, agent) keys over one base, each layer on the one below, as a build
    chains them (a parent is named by its key and generation)."""
    facts = Facts(wheelhouse=house or wheelhouse(), dev_key=dev_key)
    system = layer_key("system", "base-sha", build.SYSTEM.key_inputs(cfg, facts))
    config = layer_key("config", f"{system}.1", build.CONFIG.key_inputs(cfg, facts))
    return system, config, layer_key("agent", f"{config}.1", build.AGENT.key_inputs(cfg, facts))


REFERENCE = config(dev_mode=False)

# (what changes, the config with it changed) -> the lowest layer it must rebuild.
SYSTEM_CHANGES = {
    "mirror": config(dev_mode=False, mirror="http://mirror.example/debian"),
    "docker source": config(dev_mode=False, docker_source="docker-ce"),
    "disk size": config(dev_mode=False, size="6G"),
    "release": make_config(
        BuildOptions(guest_os="ubuntu", release="noble", output="/tmp/x.qcow2", dev_mode=False),
        {"HOST_SCP_USERNAME": "stack"},
    ),
}
CONFIG_CHANGES = {
    "guest user": config(dev_mode=False, guest_username="trove"),
    "datasources": config(dev_mode=False, datasources="OpenStack"),
    "etc hosts": config({"DIB_CLOUD_INIT_ETC_HOSTS": "template"}, dev_mode=False),
    "root password": config({"TROVE_ROOT_PASSWORD": "secret-1"}, dev_mode=False),
}
AGENT_CHANGES = {
    "dev mode": config(),
    "management gateway": config({"TROVE_MGMT_GATEWAY": "10.0.0.1"}, dev_mode=False),
    "controller user": config({"HOST_SCP_USERNAME": "other"}, dev_mode=False),
}
# Options that change only the output: no layer is rebuilt.
OUTPUT_ONLY = {
    "format": config(dev_mode=False, output="/tmp/x.raw"),
    "compression": config(dev_mode=False, compression="zstd"),
    "output path": config(dev_mode=False, output="/elsewhere/y.qcow2"),
    "max age": config(dev_mode=False, max_age_days=1.0),
}


@pytest.mark.parametrize("what", sorted(SYSTEM_CHANGES))
def test_system_inputs_rebuild_every_layer(what: str) -> None:
    ref = keys(REFERENCE)
    changed = keys(SYSTEM_CHANGES[what])
    assert all(a != b for a, b in zip(changed, ref, strict=True))  # the others on a new parent


@pytest.mark.parametrize("what", sorted(CONFIG_CHANGES))
def test_config_inputs_reuse_the_system_layer(what: str) -> None:
    ref = keys(REFERENCE)
    system, config, agent = keys(CONFIG_CHANGES[what])
    assert system == ref[0]
    assert config != ref[1] and agent != ref[2]


@pytest.mark.parametrize("what", sorted(AGENT_CHANGES))
def test_agent_inputs_rebuild_only_the_agent_layer(what: str) -> None:
    ref = keys(REFERENCE)
    system, config, agent = keys(AGENT_CHANGES[what])
    assert (system, config) == ref[:2]
    assert agent != ref[2]


@pytest.mark.parametrize("what", sorted(OUTPUT_ONLY))
def test_output_options_rebuild_no_layer(what: str) -> None:
    assert keys(OUTPUT_ONLY[what]) == keys(REFERENCE)


def test_another_agent_release_or_wheel_rebuilds_only_the_agent_layer() -> None:
    ref = keys(REFERENCE)
    for house in (wheelhouse("25.1.0"), wheelhouse(digest="b" * 64)):
        changed = keys(REFERENCE, house)
        assert changed[:2] == ref[:2] and changed[2] != ref[2]


def test_the_same_root_password_is_the_same_key_though_its_hash_is_salted_anew() -> None:
    one = config({"TROVE_ROOT_PASSWORD": "secret-1"}, dev_mode=False)
    two = config({"TROVE_ROOT_PASSWORD": "secret-1"}, dev_mode=False)
    assert one.root_password_hash != two.root_password_hash  # a new salt each build
    assert keys(one) == keys(two)
    assert keys(config({"TROVE_ROOT_PASSWORD": "secret-2"}, dev_mode=False)) != keys(one)
    # Neither the password nor its crypt hash is written into the cache's entry.
    assert "secret-1" not in str(build.config_inputs(one, Facts()))
    assert str(one.root_password_hash) not in str(build.config_inputs(one, Facts()))


def test_a_dev_key_is_part_of_the_guest_layer() -> None:
    dev = config()
    a, b = KeyPair.generate("a"), KeyPair.generate("b")
    assert keys(dev, dev_key=a)[:2] == keys(dev, dev_key=b)[:2]
    assert keys(dev, dev_key=a)[2] != keys(dev, dev_key=b)[2]
    assert keys(dev, dev_key=a) == keys(dev, dev_key=KeyPair(a.private, a.public))


@pytest.fixture
def code_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A copy of the package the digests read instead of the real one: edits stay here."""
    copy = tmp_path / "assembler"
    shutil.copytree(codeid.ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codeid, "ROOT", copy)
    return copy


def edit(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")


# (module edited) -> which of (system, config, agent) keys change. Every layer above a changed
# one changes with it (its parent's key is in its own).
CODE_EDITS = {
    "steps/agent.py": (False, False, True),
    "agent/venv.py": (False, False, True),  # imported by the agent step's module only
    "keyscan.py": (False, True, True),  # the key detector: the strip (agent) and hygiene (config)
    "agent/slim.py": (False, False, True),
    "steps/hygiene.py": (False, True, True),
    "steps/user.py": (False, True, True),
    "steps/apt.py": (True, True, True),
    "hostapt.py": (True, True, True),  # imported by the packages step's module
    "debrepack.py": (True, True, True),
    "guest.py": (True, True, True),  # every step runs through it
    # Neither the CLI, the errors' wording, config parsing nor the runner shapes an image.
    "cli.py": (False, False, False),
    "errors.py": (False, False, False),
    "config.py": (False, False, False),
    "build.py": (False, False, False),
    "stack.py": (False, False, False),
    "boottest/harness.py": (False, False, False),
}


@pytest.mark.parametrize("module", sorted(CODE_EDITS))
def test_editing_a_module_renews_the_layers_that_run_it(code_copy: Path, module: str) -> None:
    ref = keys(REFERENCE)
    edit(code_copy / module)
    changed = keys(REFERENCE)
    assert tuple(a != b for a, b in zip(changed, ref, strict=True)) == CODE_EDITS[module]


def test_a_new_module_a_step_imports_becomes_part_of_its_layer(code_copy: Path) -> None:
    """No list to keep: a module a step starts importing counts from then on."""
    (code_copy / "helper_new.py").write_text("VALUE = 1\n", encoding="utf-8")
    ref = keys(REFERENCE)
    edit(code_copy / "helper_new.py")
    assert keys(REFERENCE) == ref  # nothing imports it yet
    step = code_copy / "steps" / "trove.py"
    step.write_text("from assembler import helper_new  # noqa\n" + step.read_text())
    ref = keys(REFERENCE)
    assert "assembler.helper_new" in build.CONFIG.modules()
    edit(code_copy / "helper_new.py")
    changed = keys(REFERENCE)
    assert changed[0] == ref[0] and changed[1] != ref[1]


def test_reordering_a_layer_s_steps_renews_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = keys(REFERENCE)
    steps = build.CONFIG.steps
    monkeypatch.setattr(
        build, "CONFIG", replace(build.CONFIG, steps=(steps[1], steps[0], *steps[2:]))
    )
    changed = keys(REFERENCE)
    assert changed[0] == ref[0] and changed[1] != ref[1]


def test_every_layer_s_code_comes_from_its_steps_imports() -> None:
    for layer in build.LAYERS:
        modules = layer.modules()
        for _, step in layer.steps:
            assert codeid.module_of(step) in modules
        assert not set(modules) & set(codeid.NEUTRAL)
        assert "assembler.build" not in modules and "assembler.stack" not in modules


def test_a_file_the_agent_step_copies_is_part_of_its_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = keys(REFERENCE)
    real = stack.resource_files
    extra = tmp_path / "another.service"
    extra.write_text("[Unit]\n")
    monkeypatch.setattr(
        stack, "resource_files", lambda d: [*real(d), extra] if d == "overlays/agent" else real(d)
    )
    after = keys(REFERENCE)
    assert after[:2] == before[:2] and after[2] != before[2]


def test_inputs_hold_no_host_paths_that_vary_between_builds() -> None:
    """The keys of two builds that differ only in output path and scratch space match."""
    a = replace(REFERENCE, output=Path("/one/a.qcow2"))
    b = replace(REFERENCE, output=Path("/two/b.qcow2"))
    assert keys(a) == keys(b)
