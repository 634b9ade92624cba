"""A Trove guest image, step by step. This list IS the description of what an image contains."""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from assembler import accel as accel_mod
from assembler import cancel, embed
from assembler.agent.devkeys import KeyPair, authorize_on_controller, save_beside
from assembler.agent.payload import AgentPayload, agent_wheelhouse, check_agent, prepare_agent
from assembler.agent.wheelhouse import Wheelhouse
from assembler.config import BuildConfig
from assembler.convert import convert, image_info
from assembler.distros import apt_sources
from assembler.errors import AssemblerError, BuildError, UsageError
from assembler.fetch import resolve_base
from assembler.formats import FORMATS
from assembler.guest import appliance
from assembler.images import DiskImage, inspect_disk
from assembler.layers import Entry, LayerCache, Parent, digest_files
from assembler.manifest import Manifest, StepRecord, manifest_path, sha256_file, write_atomically
from assembler.packages import DOCKER, RUNTIME_PACKAGES
from assembler.paths import cache_dir
from assembler.resources import resource_files
from assembler.steps import agent as agent_steps
from assembler.steps import (
    apt,
    cloudinit,
    datastore_images,
    disk,
    docker,
    hygiene,
    packages,
    trove,
    user,
)

log = logging.getLogger(__name__)

Step = Callable[[Any, BuildConfig], None]


def system_steps() -> tuple[tuple[str, Step], ...]:
    """The system layer: the disk and every package. Slow (apt and dpkg under emulation) and
    shared by every image of a release, whatever its user, agent or keys."""
    return (
        ("grow-root", disk.grow_root),
        ("mount", disk.mount_root),
        ("apt-prepare", apt.prepare),
        ("docker-repo", docker.add_docker_repo),
        ("packages", packages.install),
        ("docker", docker.enable),
        ("apt-cleanup", apt.cleanup),
        ("trim", disk.trim),
    )


def config_steps(mounts: dict[str, str]) -> tuple[tuple[str, Step], ...]:
    """The config layer: who logs in, cloud-init, Trove's directories; then the image is made
    anonymous. Hygiene runs here, below the agent layer: the agent's steps leave no logs,
    keys or machine state behind, so the image stays clean when only the agent changes."""
    return (
        ("mount", partial(disk.mount, mounts=mounts)),
        ("guest-user", user.create_guest_user),
        ("sudoers", user.sudoers),
        ("docker-group", docker.add_user),
        ("root-password", user.root_password),
        ("cloud-init-datasources", cloudinit.datasources),
        ("cloud-init-user", cloudinit.default_user),
        ("cloud-init-etc-hosts", cloudinit.etc_hosts),
        ("trove-directories", trove.directories),
        ("hygiene", hygiene.clean),
        ("trim", disk.trim),
    )


def datastore_steps(
    mounts: dict[str, str], archives: list[tuple[Path, str]]
) -> tuple[tuple[str, Step], ...]:
    """The datastore-images layer, between config and agent (only with --datastore-image): an
    agent rebuild never copies the images again, and changing them rebuilds only the agent."""
    return (
        ("mount", partial(disk.mount, mounts=mounts)),
        ("datastore-images", partial(datastore_images.upload, archives=archives)),
        ("trim", disk.trim),
    )


def agent_steps_for(
    mounts: dict[str, str], agent: AgentPayload, dev_key: KeyPair | None
) -> tuple[tuple[str, Step], ...]:
    """The agent layer, on top: what changes with every agent release or checkout. One
    appliance launch, no apt, and no step below it runs again."""
    return (
        ("mount", partial(disk.mount, mounts=mounts)),
        ("agent-venv", partial(agent_steps.install_venv, payload=agent)),
        ("agent-services", partial(agent_steps.services, payload=agent)),
        ("agent-controller", agent_steps.controller),
        *([("dev-keys", partial(agent_steps.dev_keys, pair=dev_key))] if dev_key else []),
        ("trim", disk.trim),
    )


ASSEMBLER = Path(__file__).parent
# The code each layer's steps run: a change to it makes the layer's cached copy stale.
# build.py itself is in each: it decides which steps make up a layer.
SYSTEM_CODE = (
    "build.py",
    "steps/disk.py", "steps/apt.py", "steps/docker.py", "steps/packages.py",
    "packages.py", "distros.py", "guest.py",
)  # fmt: skip
CONFIG_CODE = (
    "build.py",
    "secrets.py",
    "steps/disk.py", "steps/user.py", "steps/docker.py", "steps/cloudinit.py", "steps/trove.py",
    "steps/hygiene.py", "keyscan.py", "guest.py", "resources.py",
)  # fmt: skip
DATASTORE_CODE = ("build.py", "embed.py", "steps/disk.py", "steps/datastore_images.py", "guest.py")
AGENT_CODE = (
    "build.py",
    "keyscan.py",  # which private keys the venv is stripped of
    "steps/disk.py", "steps/agent.py", "agent/venv.py", "agent/payload.py", "agent/devkeys.py",
    "agent/slim.py",  # which test suites the venv is slimmed of
    "guest.py", "resources.py",
)  # fmt: skip


def code_digest(files: tuple[str, ...], resource_dirs: tuple[str, ...] = ()) -> str:
    paths = [ASSEMBLER / f for f in files]
    for directory in resource_dirs:
        paths += resource_files(directory)
    return digest_files(paths)


def system_inputs(cfg: BuildConfig) -> dict[str, Any]:
    docker = DOCKER[cfg.docker_source]
    return {
        "code": code_digest(SYSTEM_CODE),
        "release": cfg.release.codename,
        "sources": apt_sources(cfg.release, cfg.mirror),
        "packages": sorted({*RUNTIME_PACKAGES, *docker.packages}),
        "docker": [str(cfg.docker_source), *docker.units],
        "size": cfg.size_bytes,
    }


def config_inputs(cfg: BuildConfig) -> dict[str, Any]:
    return {
        "code": code_digest(CONFIG_CODE, ("overlays/user", "cloudinit")),
        "user": cfg.guest_username,
        "root_password": cfg.root_password_id,
        "datasources": list(cfg.datasources),
        "etc_hosts": str(cfg.etc_hosts),
    }


def datastore_inputs(cfg: BuildConfig, fetched: list[embed.Fetched]) -> dict[str, Any]:
    # The images' digests, not their sources: the same image from elsewhere is the same layer.
    return {
        "code": code_digest(DATASTORE_CODE),
        "mode": str(cfg.embed_mode),
        "images": [
            [f.spec.target, f.image_id, [x.digest for x in f.image.layers]] for f in fetched
        ],
    }


def agent_inputs(
    cfg: BuildConfig, wheelhouse: Wheelhouse, dev_key: KeyPair | None
) -> dict[str, Any]:
    agent = cfg.agent
    return {
        "code": code_digest(AGENT_CODE, ("overlays/agent",)),
        "dev_mode": cfg.dev_mode,
        # The wheels' hashes: another agent version or source is another set of wheels.
        "agent": wheelhouse.manifest(),
        "controller": [agent.controller_host, agent.controller_trove_path, agent.mgmt_gateway],
        "host_scp_username": cfg.host_scp_username,
        "sync_logs": agent.sync_logs,
        "dev_public_key": dev_key.public if dev_key else None,
    }


def check_base(path: Path) -> DiskImage:
    base = inspect_disk(path, "base image")
    if base.backing_file:
        raise UsageError(f"base image {path} has a backing file; flatten it with qemu-img convert")
    return base


def check_output(output: Path) -> None:
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {parent} is not writable")
    if output.is_dir():
        raise UsageError(f"output {output} is a directory")


def run_steps(
    g: Any, cfg: BuildConfig, records: list[StepRecord], plan: tuple[tuple[str, Step], ...]
) -> None:
    for name, step in plan:
        cancel.check()
        log.info("step %s", name)
        started = time.monotonic()
        try:
            step(g, cfg)
        except AssemblerError:
            raise
        except RuntimeError as exc:  # guestfs reports every failed call as RuntimeError
            cancel.check()  # the appliance was stopped under it: an interruption, not a fault
            raise BuildError(name, str(exc).strip().splitlines()[-1]) from exc
        seconds = time.monotonic() - started
        records.append(StepRecord(name, seconds))
        log.info("step %s done in %.1f s", name, seconds)


def build(cfg: BuildConfig) -> Manifest:
    """Build the image described by cfg at cfg.output, with its manifest beside it."""
    check_output(cfg.output)
    fetched = resolve_base(
        cfg.release, cfg.base, cfg.base_sha256, cfg.base_url, cfg.signing_key, cfg.refresh
    )
    base = check_base(fetched.path)
    if cfg.size_bytes < base.virtual_size:
        raise UsageError(
            f"--size {cfg.size_bytes} bytes is smaller than the base image's "
            f"{base.virtual_size} bytes"
        )
    chosen_accel = accel_mod.resolve(cfg.accel)
    manifest = Manifest(
        inputs=_inputs(cfg, chosen_accel),
        base={
            **fetched.manifest(),
            "format": base.format,
            "virtual_size": base.virtual_size,
            # Published images are verified with the publisher's algorithm; sha256 is what
            # everything downstream (Glance, our caches) compares.
            "sha256": fetched.sha256 or sha256_file(base.path),
        },
    )
    check_agent(cfg)
    # Fetched (and verified) before any appliance starts: a missing tag fails in seconds.
    embedded = embed.fetch_all(cfg.datastore_images)
    wheelhouse = agent_wheelhouse(cfg)
    dev_key = _dev_key(cfg)
    cache = LayerCache(cfg.layer_cache)
    parent = Parent(base.path, base.format, manifest.base["sha256"])
    workroot = cache_dir() / "work"
    workroot.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=workroot) as work, ExitStack() as held:

        def build_system(overlay: Path) -> dict[str, Any]:
            return _run_layer(overlay, cfg, chosen_accel, system_steps, network=True)

        system, hit = held.enter_context(
            cache.layer(
                "system",
                parent,
                system_inputs(cfg),
                build_system,
                ages=True,
                max_age_days=cfg.max_age_days,
                refresh=cfg.refresh,
                size=cfg.size_bytes,
            )
        )
        manifest.layers.append(_layer_record(system, hit))
        mounts = system.record["mounts"]

        def build_config(overlay: Path) -> dict[str, Any]:
            return _run_layer(overlay, cfg, chosen_accel, lambda: config_steps(mounts))

        config, hit = held.enter_context(
            cache.layer("config", _on(cache, system), config_inputs(cfg), build_config)
        )
        manifest.layers.append(_layer_record(config, hit))
        below = config
        if embedded:

            def build_datastore(overlay: Path) -> dict[str, Any]:
                archives = embed.write_archives(embedded, Path(work))
                try:
                    return _run_layer(
                        overlay, cfg, chosen_accel, lambda: datastore_steps(mounts, archives)
                    )
                finally:
                    for host_path, _ in archives:
                        host_path.unlink(missing_ok=True)

            below, hit = held.enter_context(
                cache.layer(
                    "datastore-images", _on(cache, config), datastore_inputs(cfg, embedded),
                    build_datastore,
                )
            )  # fmt: skip
            manifest.layers.append(_layer_record(below, hit))

        def build_agent(overlay: Path) -> dict[str, Any]:
            # The venv is laid out on the host while the appliance boots: two cores, two jobs.
            with ThreadPoolExecutor(1) as pool:
                prepared = pool.submit(_timed, prepare_agent, cfg, Path(work), wheelhouse)

                def plan() -> tuple[tuple[str, Step], ...]:
                    return agent_steps_for(mounts, prepared.result()[0], dev_key)

                record = _run_layer(overlay, cfg, chosen_accel, plan)
            agent, seconds = prepared.result()
            record["steps"].insert(0, asdict(StepRecord("agent-prepare", seconds)))
            record["agent"] = agent.manifest()
            return record

        # A key pair made for this build alone would make every dev build's agent layer new:
        # such a layer (holding the private key) stays in the build's scratch space.
        ephemeral = dev_key is not None and cfg.agent.dev_key is None
        if ephemeral:
            log.info("agent layer not cached: its dev key is new (--dev-key caches it)")
        agent_cache = LayerCache(Path(work) / "layers") if ephemeral else cache
        top, hit = held.enter_context(
            agent_cache.layer(
                "agent", _on(cache, below), agent_inputs(cfg, wheelhouse, dev_key), build_agent
            )
        )
        manifest.layers.append(_layer_record(top, hit))
        manifest.steps = [StepRecord(**s) for layer in manifest.layers for s in layer["steps"]]
        manifest.packages = system.record["packages"]
        manifest.agent = dict(top.record["agent"])
        manifest.datastore_images = [
            {**f.record(), "landed": str(cfg.embed_mode)} for f in embedded
        ]
        if dev_key is not None:
            manifest.private_keys = [f"/home/{cfg.guest_username}/.ssh/id_ed25519"]
            manifest.agent["dev_public_key"] = dev_key.public
        log.info("converting to %s", cfg.image_format)
        started = time.monotonic()
        convert(agent_cache.overlay(top), cfg.image_format, cfg.output, str(cfg.compression))
        manifest.steps.append(StepRecord("convert", time.monotonic() - started))
    info = image_info(cfg.output)
    manifest.output = {
        "path": str(cfg.output),
        "format": str(cfg.image_format),
        "glance_disk_format": FORMATS[cfg.image_format].glance_disk_format,
        "virtual_size": info.get("virtual-size"),
        "size": cfg.output.stat().st_size,
        "sha256": sha256_file(cfg.output),
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if dev_key is not None:
        saved = save_beside(dev_key, cfg.output)
        log.info("dev mode: the guest's SSH key pair is saved at %s (and .pub)", saved)
        if cfg.agent.authorize_on_controller:
            keys = authorize_on_controller(dev_key, cfg.host_scp_username)
            log.info(
                "dev mode: the guest's key may now log in as %s (%s)", cfg.host_scp_username, keys
            )
    write_atomically(manifest_path(cfg.output), manifest.to_json())
    return manifest


def _run_layer(
    overlay: Path,
    cfg: BuildConfig,
    chosen_accel: accel_mod.Accel,
    plan: Callable[[], tuple[tuple[str, Step], ...]],
    network: bool = False,
) -> dict[str, Any]:
    """One appliance launch on a layer's overlay, its steps run; returns the layer's record
    (with the installed packages and mountpoints when the layer has apt: `network`)."""
    records: list[StepRecord] = []
    started = time.monotonic()
    with appliance([(overlay, "qcow2")], accel=chosen_accel, network=network) as g:
        records.append(StepRecord("launch", time.monotonic() - started))
        run_steps(g, cfg, records, plan())
        found = (
            {"packages": packages.installed(g), "mounts": disk.mountpoints(g)} if network else {}
        )
    return {"steps": [asdict(s) for s in records], **found}


def _on(cache: LayerCache, entry: Entry) -> Parent:
    return Parent(cache.overlay(entry), "qcow2", entry.ident)


T = TypeVar("T")


def _timed(func: Callable[..., T], *args: Any) -> tuple[T, float]:
    started = time.monotonic()
    return func(*args), time.monotonic() - started


def _layer_record(entry: Entry, hit: bool) -> dict[str, Any]:
    """For the manifest: which layers were reused, and the steps of those built now."""
    return {
        "name": entry.name,
        "key": entry.key,
        "generation": entry.generation,
        "cached": hit,
        "built_at": datetime.datetime.fromtimestamp(entry.created, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "steps": [] if hit else entry.record["steps"],
    }


def _dev_key(cfg: BuildConfig) -> KeyPair | None:
    if not cfg.dev_mode:
        return None  # a production image never holds a private key
    comment = f"trove-guest-{cfg.release.codename}-dev"
    if cfg.agent.dev_key is not None:
        return KeyPair.load(cfg.agent.dev_key, comment)
    return KeyPair.generate(comment)


def _inputs(cfg: BuildConfig, chosen_accel: accel_mod.Accel) -> dict[str, Any]:
    inputs = asdict(cfg)
    inputs.pop("root_password_hash")
    inputs.pop("root_password_id")
    inputs["release"] = cfg.release.codename
    inputs["guest_os"] = str(cfg.guest_os)
    inputs["root_password"] = cfg.root_password_hash is not None
    inputs["accel"] = str(chosen_accel)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(inputs.items())}
