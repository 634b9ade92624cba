"""Build or reuse a stand-in image as an OCI image layout, cached per machine.

cache_dir()/standins/<name>-<key>/ is the layout; the key hashes everything that shapes the
image (its spec, the mirror, the overlay files' bytes, this package's code and the base helpers
it borrows), so a change to any of them builds a new one. A build happens in a temp dir beside
it under a lock file, and is renamed into place only when whole: racing processes build once,
and an interrupted build leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from assembler import base, leftovers
from assembler.distros import RELEASES
from assembler.errors import UsageError
from assembler.paths import cache_dir
from assembler.standin import layer, layout, rootfs, specs
from assembler.standin.layer import LayerBlob, pack_layer
from assembler.standin.layout import Image, add_layer, read_image, write_image
from assembler.standin.specs import RELEASE, StandIn, standin

log = logging.getLogger(__name__)

# Bump when the recipe changes in a way the hashed inputs below do not show.
RECIPE_VERSION = 1

# The Debian package version the server really is, e.g. 15.8-0+deb12u1.
VERSION_LABEL = "io.trove-image-assembler.test-double.package-version"


def standin_layout(name: str, mirror: str | None = None) -> Path:
    """The OCI image layout dir of stand-in `name`, built first if this machine has none."""
    spec = standin(name)
    archive = _archive(mirror)
    path = cache_root() / f"{name}-{standin_key(spec, archive)[:16]}"
    if path.is_dir():
        return path
    with _locked(path):
        if path.is_dir():  # whoever held the lock built it meanwhile
            return path
        _check_host(spec)
        start = time.monotonic()
        with _staging(path) as tmp:
            if spec.variant_of is None:
                _build_image(spec, archive, tmp)
            else:
                _build_variant(spec, read_image(standin_layout(spec.variant_of, mirror)), tmp)
        log.info("stand-in %s built in %.0f s: %s", name, time.monotonic() - start, path)
    return path


def cache_root() -> Path:
    path = cache_dir() / "standins"
    path.mkdir(parents=True, exist_ok=True)
    return path


def standin_key(spec: StandIn, archive: str) -> str:
    """Hex digest of every input that shapes the image."""
    inputs: dict[str, Any] = {
        "recipe": RECIPE_VERSION,
        "spec": dataclasses.asdict(spec),
        "archive": archive,
        "overlay": {rel: _sha(src.read_bytes()) for src, rel in rootfs.overlay_files(spec)},
        "code": {m.__name__: _sha(inspect.getsource(m).encode()) for m in _CODE},
        "base_helpers": [inspect.getsource(f) for f in _BASE_HELPERS],
    }
    if spec.variant_of is not None:
        inputs["variant_of"] = standin_key(standin(spec.variant_of), archive)
    return _sha(json.dumps(inputs, sort_keys=True).encode())


def image_config(spec: StandIn, layers: list[LayerBlob], version: str) -> dict[str, Any]:
    """The OCI image config: how a runtime starts the container, and labels saying what it is."""
    env = [f"PATH={spec.path}", *(f"{k}={v}" for k, v in spec.env)]
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(spec.entrypoint),
            "Cmd": list(spec.cmd),
            "Env": env,
            "ExposedPorts": {f"{p}/tcp": {} for p in spec.ports},
            "StopSignal": spec.stop_signal,
            "Labels": labels(spec, version),
        },
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        "history": [{"created_by": f"trove-image-assembler stand-in {spec.name}"}],
    }


def labels(spec: StandIn, version: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": f"{spec.repository} (test double)",
        "org.opencontainers.image.description": spec.description,
        "org.opencontainers.image.version": spec.tag,
        "org.opencontainers.image.ref.name": spec.tag,
        "org.opencontainers.image.base.name": f"debian:{RELEASE}",
        VERSION_LABEL: version,
    }


def _build_image(spec: StandIn, archive: str, out: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=f"standin-{spec.name}-", dir=base._scratch_root()))
    try:
        root = scratch / "root"
        version = rootfs.build_rootfs(spec, root, archive)
        packed = scratch / "layer.tar.gz"
        blob = pack_layer(root, packed)
        add_layer(out, packed, blob)
    finally:
        base._remove_tree(scratch)
    _write(spec, out, [blob], version)


def _build_variant(spec: StandIn, parent: Image, out: Path) -> None:
    """The parent image's layers, shared, plus one small layer with the variant's overlay."""
    layers = parent.layers
    for blob in layers:
        add_layer(out, parent.blob(blob.digest), blob)
    scratch = leftovers.run_dir()
    with tempfile.TemporaryDirectory(prefix=f"standin-{spec.name}-", dir=scratch) as tmp:
        tree = Path(tmp) / "root"
        tree.mkdir()
        rootfs.lay_overlay(spec, tree)
        packed = Path(tmp) / "layer.tar.gz"
        blob = pack_layer(tree, packed)
        add_layer(out, packed, blob)
    version = parent.config["config"]["Labels"][VERSION_LABEL]
    _write(spec, out, [*layers, blob], version)


def _write(spec: StandIn, out: Path, layers: list[LayerBlob], version: str) -> None:
    config = image_config(spec, layers, version)
    annotations = {
        "org.opencontainers.image.description": spec.description,
        "org.opencontainers.image.title": f"{spec.repository}:{spec.tag} (test double)",
    }
    write_image(out, config, layers, spec.tag, annotations)


def _check_host(spec: StandIn) -> None:
    if os.geteuid() != 0:
        raise UsageError(
            f"building the stand-in image {spec.name} needs root (debootstrap and chroot)"
        )
    base.check_host(base.BaseSpec(RELEASES[RELEASE]))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(f"{path.name}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", path.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A temp dir that becomes `path` when the block ends normally, and vanishes otherwise."""
    # Under the lock: a dir left by a process killed outright (no cleanup ran) is garbage now.
    for stale in path.parent.glob(f".{path.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = leftovers.partial(path)
    tmp.mkdir()
    try:
        yield tmp
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _archive(mirror: str | None) -> str:
    return (mirror or RELEASES[RELEASE].distro.archive).rstrip("/")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The code whose every line can change the image: ours, and what we borrow from the base.
_CODE = (layer, layout, rootfs, specs, sys.modules[__name__])
_BASE_HELPERS = (base._bootstrap, base._isolated, base._host_env)
