"""A Trove guest image, step by step. This list IS the description of what an image contains."""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from assembler import accel as accel_mod
from assembler import cancel
from assembler.agent.devkeys import KeyPair, authorize_on_controller, save_beside
from assembler.agent.payload import AgentPayload, check_agent, prepare_agent
from assembler.config import BuildConfig
from assembler.convert import convert, image_info
from assembler.errors import AssemblerError, BuildError, UsageError
from assembler.fetch import resolve_base
from assembler.formats import FORMATS
from assembler.guest import appliance
from assembler.images import DiskImage, inspect_disk
from assembler.manifest import Manifest, StepRecord, manifest_path, sha256_file, write_atomically
from assembler.paths import cache_dir
from assembler.run import run
from assembler.steps import agent as agent_steps
from assembler.steps import apt, cloudinit, disk, docker, hygiene, packages, trove, user

log = logging.getLogger(__name__)

Step = Callable[[Any, BuildConfig], None]


def steps(agent: AgentPayload, dev_key: KeyPair | None) -> tuple[tuple[str, Step], ...]:
    """Every step of a build, in order; the agent's host-prepared parts are bound in."""
    return (
        ("grow-root", disk.grow_root),
        ("mount", disk.mount_root),
        ("apt-prepare", apt.prepare),
        ("docker-repo", docker.add_docker_repo),
        ("packages", packages.install),
        ("guest-user", user.create_guest_user),
        ("sudoers", user.sudoers),
        ("docker", docker.enable),
        ("root-password", user.root_password),
        ("cloud-init-datasources", cloudinit.datasources),
        ("cloud-init-user", cloudinit.default_user),
        ("cloud-init-etc-hosts", cloudinit.etc_hosts),
        ("trove-directories", trove.directories),
        ("agent-venv", partial(agent_steps.install_venv, payload=agent)),
        ("agent-services", partial(agent_steps.services, payload=agent)),
        ("agent-controller", agent_steps.controller),
        *([("dev-keys", partial(agent_steps.dev_keys, pair=dev_key))] if dev_key else []),
        ("apt-cleanup", apt.cleanup),
        ("hygiene", hygiene.clean),
        ("trim", disk.trim),
    )


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
    g: Any, cfg: BuildConfig, manifest: Manifest, plan: tuple[tuple[str, Step], ...]
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
        manifest.steps.append(StepRecord(name, seconds))
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
    workroot = cache_dir() / "work"
    workroot.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=workroot) as work:
        started = time.monotonic()
        agent = prepare_agent(cfg, Path(work))
        manifest.steps.append(StepRecord("agent-prepare", time.monotonic() - started))
        manifest.agent = agent.manifest()
        dev_key = _dev_key(cfg)
        if dev_key is not None:
            manifest.private_keys = [f"/home/{cfg.guest_username}/.ssh/id_ed25519"]
            manifest.agent["dev_public_key"] = dev_key.public
        # The base is never written: every change lands in an overlay backed by it.
        overlay = Path(work) / "image.qcow2"
        run([
            "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1",
            "-F", base.format, "-b", base.path, overlay, str(cfg.size_bytes),
        ])  # fmt: skip
        started = time.monotonic()
        with appliance([(overlay, "qcow2")], accel=chosen_accel, network=True) as g:
            manifest.steps.append(StepRecord("launch", time.monotonic() - started))
            run_steps(g, cfg, manifest, steps(agent, dev_key))
            manifest.packages = packages.installed(g)
        log.info("converting to %s", cfg.image_format)
        started = time.monotonic()
        convert(overlay, cfg.image_format, cfg.output)
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
    inputs["release"] = cfg.release.codename
    inputs["guest_os"] = str(cfg.guest_os)
    inputs["root_password"] = cfg.root_password_hash is not None
    inputs["accel"] = str(chosen_accel)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(inputs.items())}
