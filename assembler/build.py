"""A Trove guest image, step by step. This list IS the description of what an image contains."""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from assembler import accel as accel_mod
from assembler import basefacts, embed, leftovers, progress, stacked
from assembler.agent.devkeys import KeyPair, authorize_on_controller, save_beside
from assembler.agent.payload import agent_wheelhouse, check_agent
from assembler.base import BaseSpec, archive_base, base_key
from assembler.config import ARCHIVE_BASE, BuildConfig, Compression
from assembler.convert import convert, image_info
from assembler.distros import apt_sources
from assembler.errors import UsageError
from assembler.facts import Facts
from assembler.fetch import resolve_base
from assembler.fleet.matrix import slots
from assembler.fleet.remote import LayerRegistry, SharedBase
from assembler.formats import FORMATS, ImageFormat
from assembler.images import DiskImage, inspect_disk
from assembler.layers import Entry, LayerCache, Parent
from assembler.manifest import Manifest, StepRecord, manifest_path, sha256_file, write_atomically
from assembler.outputs import OutputCache, output_key
from assembler.packages import DOCKER
from assembler.stack import Layer, build_layer
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

# ----- the layers, bottom to top -------------------------------------------------------------


def system_inputs(cfg: BuildConfig, facts: Facts | None = None) -> dict[str, Any]:
    docker = DOCKER[cfg.docker_source]
    return {
        "release": cfg.release.codename,
        "sources": apt_sources(cfg.release, cfg.mirror),
        "packages": packages.wanted(cfg),
        "docker": [str(cfg.docker_source), *docker.units],
        "size": cfg.size_bytes,
    }


# The disk and every package: slow (dpkg under emulation) and shared by every image of a
# release, whatever its user, agent or keys. The host resolves and downloads the packages.
SYSTEM = Layer(
    "system",
    steps=(
        ("inspect", disk.inspect),
        ("grow-root", disk.grow_root),
        ("mount", disk.mount),
        ("firmware", disk.firmware),
        ("learn-base", packages.learn_base),
        ("apt-prepare", apt.prepare),
        ("docker-repo", docker.add_docker_repo),
        ("packages-fetch", packages.fetch),
        ("packages", packages.install),
        ("docker", docker.enable),
        ("apt-cleanup", apt.cleanup),
        ("trim", disk.trim),
    ),
    inputs=system_inputs,
    declared=system_inputs,
    prepare=packages.prepare,
    report=packages.report,
    gives=("mounts", "firmware"),
    ages=True,
    sized=True,
)


def config_inputs(cfg: BuildConfig, facts: Facts | None = None) -> dict[str, Any]:
    return {
        "user": cfg.guest_username,
        "root_password": cfg.root_password_id,
        "datasources": list(cfg.datasources),
        "etc_hosts": str(cfg.etc_hosts),
    }


# Who logs in, cloud-init, Trove's directories; then the image is made anonymous. Hygiene runs
# here, below the agent layer: the agent's steps leave no logs, keys or machine state behind,
# so the image stays clean when only the agent changes.
CONFIG = Layer(
    "config",
    steps=(
        ("mount", disk.mount),
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
    ),
    inputs=config_inputs,
    declared=config_inputs,
    resources=("overlays/user", "cloudinit"),
    secret=lambda cfg: "it holds the root password's hash" if cfg.root_password_id else None,
)


def datastore_inputs(cfg: BuildConfig, facts: Facts) -> dict[str, Any]:
    # The images' digests, not their sources: the same image from elsewhere is the same layer.
    return {
        "mode": str(cfg.embed_mode),
        "images": [
            [f.spec.target, f.image_id, [x.digest for x in f.image.layers]] for f in facts.embedded
        ],
    }


# Only with --datastore-image, between config and agent: an agent rebuild never copies the
# images again, and changing them rebuilds only the agent.
DATASTORE_IMAGES = Layer(
    "datastore-images",
    steps=(
        ("mount", disk.mount),
        ("datastore-images", datastore_images.upload),
        ("trim", disk.trim),
    ),
    inputs=datastore_inputs,
    declared=lambda cfg: {
        "mode": str(cfg.embed_mode),
        "images": [[str(i.source), i.target] for i in cfg.datastore_images],
    },
    prepare=datastore_images.prepare,
    when=lambda cfg, facts: bool(facts.embedded),
    planned=lambda cfg: bool(cfg.datastore_images),
)


def agent_inputs(cfg: BuildConfig, facts: Facts) -> dict[str, Any]:
    agent, dev_key = cfg.agent, facts.dev_key
    return {
        "dev_mode": cfg.dev_mode,
        # The wheels' hashes: another agent version or source is another set of wheels.
        "agent": facts.wheelhouse.manifest(),
        "controller": [agent.controller_host, agent.controller_trove_path, agent.mgmt_gateway],
        "host_scp_username": cfg.host_scp_username,
        "sync_logs": agent.sync_logs,
        "dev_public_key": dev_key.public if dev_key else None,
    }


# On top, what changes with every agent release or checkout: the venv is laid out on the host
# while the appliance starts; no apt, and no step below runs again.
AGENT = Layer(
    "agent",
    steps=(
        ("mount", disk.mount),
        ("agent-venv", agent_steps.install_venv),
        ("agent-services", agent_steps.services),
        ("agent-controller", agent_steps.controller),
        ("dev-keys", agent_steps.dev_keys),
        ("trim", disk.trim),
    ),
    inputs=agent_inputs,
    resources=("overlays/agent",),
    prepare=agent_steps.prepare,
    # A key pair made for this build alone would make every dev build's agent layer new: such
    # a layer (holding the private key) stays in the build's scratch space.
    private=lambda cfg, facts: facts.ephemeral_key,
    secret=lambda cfg: "it holds the dev key pair" if cfg.dev_mode else None,
    declared=lambda cfg: {
        "dev_mode": cfg.dev_mode,
        "agent": asdict(cfg.agent),
        "host_scp_username": cfg.host_scp_username,
    },
)

LAYERS = (SYSTEM, CONFIG, DATASTORE_IMAGES, AGENT)


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


def build(cfg: BuildConfig) -> Manifest:
    """Build the image described by cfg at cfg.output, with its manifest beside it."""
    check_output(cfg.output)
    chosen_accel = accel_mod.resolve(cfg.accel)
    shared = LayerRegistry.at(cfg.cache_registry) if cfg.cache_registry else None
    if shared is not None:
        shared.check()
    shared_base: SharedBase | None = None
    if cfg.base == ARCHIVE_BASE:
        if cfg.base_sha256 or cfg.base_url or cfg.signing_key:
            raise UsageError("--base archive is built here: --sha256, --base-url and "
                             "--signing-key do not apply")  # fmt: skip
        spec = BaseSpec(cfg.release, mirror=cfg.mirror)
        fetched = archive_base(spec, chosen_accel, shared.pull_base if shared else None)
    else:
        fetched = resolve_base(
            cfg.release, cfg.base, cfg.base_sha256, cfg.base_url, cfg.signing_key, cfg.refresh
        )
    base = check_base(fetched.path)
    if cfg.base == ARCHIVE_BASE and shared is not None:
        shared_base = SharedBase(base_key(spec), fetched.path, fetched.digest, base.format)
    if cfg.size_bytes < base.virtual_size:
        raise UsageError(
            f"--size {cfg.size_bytes} bytes is smaller than the base image's "
            f"{base.virtual_size} bytes"
        )
    # Input checked: before any work, what killed builds left goes.
    leftovers.sweep(extra=(cfg.layer_cache,) if cfg.layer_cache else (), output=cfg.output)
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
    sha = manifest.base["sha256"]
    facts = Facts(
        base_sha256=sha,
        base_facts=basefacts.load(sha),
        embedded=tuple(embedded),
        wheelhouse=wheelhouse,
        dev_key=dev_key,
        ephemeral_key=dev_key is not None and cfg.agent.dev_key is None,
    )
    with (
        tempfile.TemporaryDirectory(prefix="build-", dir=leftovers.run_dir()) as work,
        ExitStack() as held,
    ):
        facts = replace(facts, scratch=Path(work))
        below = Parent(base.path, base.format, sha)
        entries: dict[str, Entry] = {}
        lower: Parent | None = None
        shareable: list[Entry] = []  # the chain's layers up to the first that holds a secret
        for layer in LAYERS:
            if not layer.when(cfg, facts):
                continue
            store = cache
            secret = layer.secret(cfg)
            if shared is not None and secret and len(shareable) == len(entries):
                log.info("%s layer not shared through the registry: %s", layer.name, secret)
            if layer.private(cfg, facts):
                log.info(
                    "%s layer not cached: its dev key is new (--dev-key caches it)", layer.name
                )
                store = LayerCache(Path(work) / "layers")
            with progress.stage(f"{layer.name} layer") as shown:
                entry, hit = held.enter_context(
                    store.layer(
                        layer.name,
                        below,
                        layer.key_inputs(cfg, facts),
                        partial(build_layer, layer, cfg=cfg, facts=facts, accel=chosen_accel),
                        ages=layer.ages,
                        max_age_days=cfg.max_age_days,
                        refresh=cfg.refresh,
                        size=cfg.size_bytes if layer.sized else None,
                        remote=shared.remote_for(store) if shared and not secret else None,
                    )
                )
                shown.cached = hit
            if not secret and len(shareable) == len(entries):
                shareable.append(entry)
            pulled = shared is not None and entry.key in shared.pulled
            manifest.layers.append(_layer_record(entry, hit, pulled))
            facts = facts.learn({k: entry.record[k] for k in layer.gives})
            lower = below if entries else None  # the layer the top lies on, if any
            entries[layer.name] = entry
            below = Parent(store.overlay(entry), "qcow2", entry.ident)
        system, top = entries["system"], entry
        manifest.steps = [StepRecord(**s) for layer in manifest.layers for s in layer["steps"]]
        manifest.packages = system.record["packages"]
        manifest.firmware = list(system.record["firmware"])
        manifest.agent = dict(top.record["agent"])
        manifest.datastore_images = [
            {**f.record(), "landed": str(cfg.embed_mode)} for f in embedded
        ]
        if dev_key is not None:
            manifest.private_keys = [f"/home/{cfg.guest_username}/.ssh/id_ed25519"]
            manifest.agent["dev_public_key"] = dev_key.public
        started = time.monotonic()
        with progress.stage(f"{cfg.image_format} output"):
            sha256 = _output(cfg, below, lower, cache, private=store is not cache)
        manifest.steps.append(StepRecord("convert", time.monotonic() - started))
        if shared is not None:  # only now: nothing of a failed build is ever shared
            with progress.stage("registry push"):
                planned = {name: slot for name, slot in slots(cfg) if slot}
                shared.push(cache, shareable, shared_base, planned)
    info = image_info(cfg.output)
    manifest.output = {
        "path": str(cfg.output),
        "format": str(cfg.image_format),
        "glance_disk_format": FORMATS[cfg.image_format].glance_disk_format,
        "virtual_size": info.get("virtual-size"),
        "size": cfg.output.stat().st_size,
        "sha256": sha256,
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


def _output(
    cfg: BuildConfig, top: Parent, lower: Parent | None, cache: LayerCache, private: bool
) -> str:
    """The output from the top layer: a copy of the same output made before, the top laid over
    the kept compressed flattening of the layers below it, or converted whole (and kept for
    next time). Returns its sha256."""
    outputs = OutputCache(cache.root / "outputs")
    key = output_key(top.ident, str(cfg.image_format), str(cfg.compression))
    stored = None if private else outputs.copy_to(key, cfg.output)
    if stored is not None:
        return stored.sha256
    if not _stacked(cfg, top, lower, outputs):
        log.info("converting to %s", cfg.image_format)
        convert(top.path, cfg.image_format, cfg.output, str(cfg.compression))
    sha256 = sha256_file(cfg.output)
    if not private:
        outputs.store(key, cfg.output, sha256, top.ident)
    return sha256


def _stacked(cfg: BuildConfig, top: Parent, lower: Parent | None, outputs: OutputCache) -> bool:
    """A compressed qcow2 whose top layer lies on another layer: the lower layers' compressed
    clusters are reused as they are (assembler/stacked.py). False when it does not apply."""
    if cfg.image_format is not ImageFormat.QCOW2 or cfg.compression is Compression.NONE:
        return False
    if lower is None:  # the top lies on the base itself: nothing below to keep
        return False
    lower_key = output_key(lower.ident, "qcow2-lower", str(cfg.compression))
    tmp = cfg.output.with_name(f".{cfg.output.name}.{os.getpid()}.stacked.partial")
    try:
        if outputs.copy_to(lower_key, tmp) is None:
            log.info("flattening the layers below the top (kept for the next rebuild)")
            convert(lower.path, ImageFormat.QCOW2, tmp, str(cfg.compression))
            # A copy, not a link: tmp is written over next, the kept file must not be.
            outputs.store(lower_key, tmp, sha256_file(tmp), lower.ident, link=False)
        try:
            stacked.lay_over(top.path, tmp)
        except stacked.Unstackable as exc:
            log.info("converting the whole chain: %s", exc)
            return False
        os.replace(tmp, cfg.output)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _layer_record(entry: Entry, hit: bool, pulled: bool) -> dict[str, Any]:
    """For the manifest: which layers were reused, and the steps of those built now."""
    return {
        "name": entry.name,
        "key": entry.key,
        "generation": entry.generation,
        "cached": hit,
        "from": "registry" if pulled else "cache" if hit else "build",
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
