"""The layer cache's second level: a repository on an OCI registry that builders share.

Local cache first, registry second, build last. A layer missing here is looked up under its
key (the tag); when found and fresh enough, its entry and overlay are fetched (digests
checked, the overlay's own sha256 checked once unpacked) and adopted by the local cache. After
a build succeeds, every layer of its chain the registry lacks is pushed, bottom up, blobs
before the manifest that lists them. A base built from a recipe is shared under the recipe's
key, as no two builds of it are byte-identical.

The cache never fails a build: a registry that cannot be reached, refuses us or sends
something unusable is named in one warning and the build goes on without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assembler import __version__, leftovers
from assembler.download import publish
from assembler.errors import CommandError, UsageError
from assembler.fleet import transfer
from assembler.fleet.artifact import (
    BASE_ARTIFACT,
    BASE_KIND,
    BASE_TAG_PREFIX,
    BUILDER,
    CREATED,
    EMPTY_DATA,
    EMPTY_DIGEST,
    ENTRY,
    GENERATION,
    KEY,
    KIND,
    LAYER_ARTIFACT,
    MANIFEST,
    PARENT,
    SHA256,
    SIZE,
    SLOT,
    TITLE,
    TOOL,
    Artifact,
    ArtifactError,
    Descriptor,
    base_tag,
    disk_type,
    iso,
    layer_tag,
    manifest,
    parse,
)
from assembler.layers import Entry, LayerCache, Parent, Remote, UnusableLayer
from assembler.oci import credentials
from assembler.oci.reference import Reference
from assembler.oci.registry import RegistryClient, RegistryError

log = logging.getLogger(__name__)

ENV = "ASSEMBLER_CACHE_REGISTRY"
_GENERATION = re.compile(r"[0-9a-f]{1,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What the registry (or what it sent) can do wrong; the build then goes on without it.
_SHARING_FAILED = (RegistryError, ArtifactError, CommandError, UnusableLayer)


@dataclass(frozen=True)
class SharedBase:
    """A base built here from a recipe: shared under the recipe's key."""

    recipe: str
    path: Path
    sha256: str
    format: str


def parse_location(text: str) -> tuple[str, str]:
    """`host[:port]/repository` -> (host, repository); tags are ours to choose."""
    last = text.rsplit("/", 1)[-1]
    if "/" not in text or "@" in text or ":" in last:
        raise UsageError(
            f"--cache-registry {text!r}: name a repository as host[:port]/path, "
            "without a tag or digest (layers are tagged by their keys)"
        )
    ref = Reference.parse(text)
    return ref.registry, ref.repository


class LayerRegistry:
    def __init__(self, host: str, repository: str, client: RegistryClient | None = None) -> None:
        self.host, self.repository = host, repository
        self.where = f"{host}/{repository}"
        # Logins as docker keeps them: never in our config, manifest or logs.
        self.client = client or RegistryClient(host, credentials=credentials.lookup(host))
        self.enabled = True
        self.pulled: set[str] = set()  # keys this build took from the registry
        self.pushed: list[str] = []  # what this build pushed, for its report
        self._known: dict[str, Artifact] = {}  # manifests found or pushed in this build

    @classmethod
    def at(cls, text: str) -> LayerRegistry:
        return cls(*parse_location(text))

    def check(self) -> None:
        """Reach the registry once, before the build needs it."""
        try:
            self.client.ping()
        except RegistryError as exc:
            self._give_up(exc, "reaching it")

    def _give_up(self, exc: Exception, doing: str) -> None:
        log.warning("cache registry %s: %s (%s); going on without it", self.where, exc, doing)
        self.enabled = False

    def find(self, tag: str) -> Artifact | None:
        if tag in self._known:
            return self._known[tag]
        fetched = self.client.find_manifest(self.repository, tag)
        if fetched is None:
            return None
        found = parse(fetched.body, f"{self.where}:{tag}")
        is_base = found.artifact_type == BASE_ARTIFACT
        if found.key != (tag.removeprefix(BASE_TAG_PREFIX) if is_base else tag):
            raise ArtifactError(f"{self.where}:{tag} is the manifest of {found.key[:12]}")
        return found

    # ----- layers --------------------------------------------------------------------------

    def remote_for(self, cache: LayerCache) -> Remote:
        """What LayerCache.layer asks for a layer it lacks: the entry adopted by `cache`, or
        None to build it."""

        def remote(key: str, parent: Parent, fresh: Callable[[Entry], bool]) -> Entry | None:
            if not self.enabled:
                return None
            try:
                return self._pull(cache, key, parent, fresh)
            except _SHARING_FAILED as exc:
                self._give_up(exc, f"pulling layer {key[:12]}")
                return None

        return remote

    def _pull(
        self, cache: LayerCache, key: str, parent: Parent, fresh: Callable[[Entry], bool]
    ) -> Entry | None:
        found = self.find(layer_tag(key))
        if found is None:
            log.info("layer %s: not in %s", key[:12], self.where)
            return None
        entry_d, disk_d = found.top()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="pull-", dir=leftovers.run_dir()) as tmp:
            doc = Path(tmp) / "entry.json"
            self.client.blob(self.repository, entry_d.digest, doc, entry_d.size)
            entry = entry_from(doc.read_bytes(), key)
            if entry.parent != parent.ident:
                raise ArtifactError(f"layer {key[:12]} lies on {entry.parent}, not {parent.ident}")
            if not fresh(entry):
                log.info(
                    "layer %s (%s) in %s is %.1f days old: built here",
                    entry.name, key[:12], self.where, entry.age_days(),
                )  # fmt: skip
                return None
            packed = Path(tmp) / "disk.zst"
            self.client.blob(self.repository, disk_d.digest, packed, disk_d.size)
            overlay = leftovers.partial(cache.overlay(entry))
            try:
                transfer.unpack(packed, overlay)
                got = transfer.sha256_file(overlay)
                if got != entry.sha256:
                    raise ArtifactError(
                        f"layer {key[:12]} unpacked to sha256 {got[:12]}, not {entry.sha256[:12]}"
                    )
                entry = cache.adopt(entry, overlay, parent)
            finally:
                overlay.unlink(missing_ok=True)
        self.pulled.add(key)
        self._known[layer_tag(key)] = found
        log.info(
            "layer %s: pulled from %s (%s, %.0f MiB in %.1f s)",
            entry.name, self.where, key[:12], disk_d.size / 2**20, time.monotonic() - started,
        )  # fmt: skip
        return entry

    def push(
        self,
        cache: LayerCache,
        chain: list[Entry],
        base: SharedBase | None,
        slots: dict[str, str] | None = None,
    ) -> None:
        """Push what the registry lacks of a finished build's chain (shareable layers only,
        bottom first), each marked with its matrix slot (by layer name); a failure is a
        warning, the image is built."""
        if not self.enabled:
            return
        try:
            self._push_bytes(EMPTY_DATA, EMPTY_DIGEST)
            below = [self._push_base(base)] if base is not None else []
            for entry in chain:
                slot = (slots or {}).get(entry.name)
                below = self._push_layer(cache, entry, below, slot)
        except _SHARING_FAILED as exc:
            self._give_up(exc, "pushing the build's layers")

    def _push_layer(
        self, cache: LayerCache, entry: Entry, below: list[Descriptor], slot: str | None
    ) -> list[Descriptor]:
        tag = layer_tag(entry.key)
        found = self.find(tag)
        if found is not None and found.generation == entry.generation:
            return list(found.layers)  # there already (pulled, or pushed by any builder)
        doc = shared_entry(entry)
        entry_d = Descriptor(ENTRY, self._push_bytes(doc), len(doc))
        overlay = cache.overlay(entry)
        disk_d = self._push_disk(overlay, "qcow2", overlay.name, entry.sha256)
        layers = [*below, entry_d, disk_d]
        annotations = {
            KEY: entry.key, KIND: entry.name, PARENT: entry.parent,
            GENERATION: entry.generation, CREATED: iso(entry.created),
            TOOL: __version__, BUILDER: socket.gethostname(),
        }  # fmt: skip
        if slot:
            annotations[SLOT] = slot
        pushed = Artifact(LAYER_ARTIFACT, annotations, tuple(layers))
        if found is not None and found.created >= entry.created:
            # Another builder built the same key, later: its tag stays. Ours is not lost to
            # the layers above it, whose manifests list these blobs themselves.
            log.info("layer %s (%s): a newer build is in %s", entry.name, tag[:12], self.where)
            return layers
        self._put(tag, pushed)
        self.pushed.append(f"{entry.name} {entry.key[:12]}")
        log.info("layer %s: pushed to %s (%s)", entry.name, self.where, entry.key[:12])
        return layers

    # ----- bases ---------------------------------------------------------------------------

    def pull_base(self, recipe: str, dest: Path) -> bool:
        """The base of this recipe from the registry, at dest (published whole); False when
        the registry has none (or cannot give it)."""
        if not self.enabled:
            return False
        try:
            found = self.find(base_tag(recipe))
            if found is None:
                log.info("base %s: not in %s, built here", recipe[:12], self.where)
                return False
            disk_d = found.base()
            want = disk_d.annotations.get(SHA256, "")
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="pull-", dir=leftovers.run_dir()) as tmp:
                packed = Path(tmp) / "base.zst"
                self.client.blob(self.repository, disk_d.digest, packed, disk_d.size)
                part = leftovers.partial(dest)
                try:
                    transfer.unpack(packed, part)
                    if not _SHA256.fullmatch(want) or transfer.sha256_file(part) != want:
                        raise ArtifactError(f"base {recipe[:12]} does not unpack to its sha256")
                    publish(part, dest)
                finally:
                    part.unlink(missing_ok=True)
        except _SHARING_FAILED as exc:
            self._give_up(exc, f"pulling base {recipe[:12]}")
            return False
        self._known[base_tag(recipe)] = found
        log.info(
            "base %s: pulled from %s (%.0f MiB in %.1f s)",
            recipe[:12], self.where, disk_d.size / 2**20, time.monotonic() - started,
        )  # fmt: skip
        return True

    def _push_base(self, base: SharedBase) -> Descriptor:
        tag = base_tag(base.recipe)
        found = self.find(tag)
        if found is not None and found.base().annotations.get(SHA256) == base.sha256:
            return found.base()
        title = f"base-{base.sha256}.{base.format}"
        disk_d = self._push_disk(base.path, base.format, title, base.sha256)
        if found is None:  # else another builder's base of this recipe: its tag stays
            built = iso(base.path.stat().st_mtime)
            annotations = {KEY: base.recipe, KIND: BASE_KIND, CREATED: built,
                           TOOL: __version__, BUILDER: socket.gethostname()}  # fmt: skip
            self._put(tag, Artifact(BASE_ARTIFACT, annotations, (disk_d,)))
            self.pushed.append(f"base {base.recipe[:12]}")
            log.info("base %s: pushed to %s", base.recipe[:12], self.where)
        return disk_d

    # ----- blobs and manifests ----------------------------------------------------------------

    def _push_disk(self, path: Path, fmt: str, title: str, sha256: str) -> Descriptor:
        with tempfile.TemporaryDirectory(prefix="push-", dir=leftovers.run_dir()) as tmp:
            packed = Path(tmp) / "disk.zst"
            transfer.pack(path, packed)
            digest = "sha256:" + transfer.sha256_file(packed)
            size = packed.stat().st_size
            self.client.push_blob(self.repository, digest, size, lambda: packed.open("rb"))
        annotations = {TITLE: title, SHA256: sha256, SIZE: str(path.stat().st_size)}
        return Descriptor(disk_type(fmt), digest, size, annotations)

    def _push_bytes(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        self.client.push_blob(self.repository, digest, len(data), lambda: io.BytesIO(data))
        return digest

    def _put(self, tag: str, artifact: Artifact) -> None:
        self.client.push_manifest(self.repository, tag, MANIFEST, manifest(artifact))
        self._known[tag] = artifact


def shared_entry(entry: Entry) -> bytes:
    """The entry as others get it: without this machine's paths."""
    doc: dict[str, Any] = asdict(entry)
    doc["parent_path"] = ""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def entry_from(data: bytes, key: str) -> Entry:
    """A pulled entry, checked: its generation and digest become file names and checks here."""
    try:
        entry = Entry(**json.loads(data))
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"the entry of layer {key[:12]} is malformed ({exc})") from None
    if entry.key != key or not _GENERATION.fullmatch(entry.generation):
        raise ArtifactError(f"the entry of layer {key[:12]} names another layer")
    if not _SHA256.fullmatch(entry.sha256) or not isinstance(entry.created, int | float):
        raise ArtifactError(f"the entry of layer {key[:12]} has no usable sha256 or time")
    return entry
