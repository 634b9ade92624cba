"""`assembler publish`: one verified command for what operators do by hand after a build.

In order: read the manifest and check the file still is what it describes; hash it once (size,
md5, sha512, and the SHA-256 a signature covers); remove what an interrupted publish of ours
left queued; reuse an image Glance already holds with the same bytes, or upload one and compare
what Glance stored with the local digests; retire the images the new one replaces and prune old
retired ones; then the datastore version.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler import cancel
from assembler.errors import UsageError
from assembler.publish import rotation
from assembler.publish.glance import CloudError, Glance, Image, connect
from assembler.publish.hashing import Digests, digests
from assembler.publish.register import Registration, register, route, rules_path, trove_package_of
from assembler.publish.rotation import Change, Retire, Retirement
from assembler.publish.signing import load_key, signature_properties
from assembler.publish.spec import (
    PROP_VERSION,
    Datastore,
    ImageSpec,
    SpecOptions,
    image_spec,
    read_manifest,
    tags_for,
)

log = logging.getLogger(__name__)

PROP_UPLOADER = "trove_assembler_uploader"
# An upload of another machine's that never finished is removed only once it is this old: it
# may still be under way.
FOREIGN_UPLOAD_AGE = datetime.timedelta(hours=24)
UNFINISHED = ("queued", "saving", "uploading", "importing")


@dataclass(frozen=True)
class PublishOptions:
    datastore: Datastore
    image: Path | None = None  # None with rollback
    cloud: str | None = None
    name: str | None = None
    extra_tags: tuple[str, ...] = ()
    visibility: str = "private"
    firmware: str | None = None
    retire: Retire = Retire.UNTAG
    keep: int | None = None
    rollback: bool = False
    sign_key: Path | None = None
    sign_cert_uuid: str | None = None
    register: bool = False
    register_with: str = "auto"
    default: bool = False
    trove_config: Path | None = None
    validation_rules: Path | None = None


def publish(opts: PublishOptions) -> int:
    tags = tags_for(opts.datastore, opts.extra_tags)
    if opts.rollback:
        glance = Glance(connect(opts.cloud))
        changes = rotation.rollback(glance, opts.datastore, tags, opts.retire)
        _report(changes, glance, tags, expect=changes[0].image.id)
        return 0
    if opts.image is None:
        raise UsageError("publish needs an IMAGE (or --rollback)")
    if opts.validation_rules is not None and not opts.validation_rules.is_file():
        raise UsageError(f"--validation-rules {opts.validation_rules}: no such file")
    if (opts.sign_key is None) != (opts.sign_cert_uuid is None):
        raise UsageError("--sign-key and --sign-cert-uuid go together")
    spec = image_spec(
        opts.image,
        read_manifest(opts.image),
        SpecOptions(opts.datastore, opts.name, opts.extra_tags, opts.visibility, opts.firmware),
    )
    key = load_key(opts.sign_key) if opts.sign_key else None
    started = time.monotonic()
    local = digests(spec.path)
    log.info("hashed %s: %d bytes in %.1f s", spec.path, local.size, time.monotonic() - started)
    if (local.sha256, local.size) != (spec.sha256, spec.size):
        raise UsageError(
            f"{spec.path} no longer matches its manifest (sha256 {local.sha256[:12]}, the "
            f"manifest says {spec.sha256[:12]}): rebuild it, or publish the file it describes"
        )
    props = dict(spec.properties)
    if key is not None and opts.sign_cert_uuid is not None:
        props |= signature_properties(key, local.sha256_raw, opts.sign_cert_uuid)
    conn = connect(opts.cloud)
    how = route(opts.register_with if opts.register else "print", opts.trove_config, conn)
    glance = Glance(conn)
    changes = sweep_unfinished(glance)
    reused = find_same(glance, spec, opts.datastore, local, opts.sign_cert_uuid)
    if reused is not None:
        changes.append(rotation.restore(glance, reused, opts.datastore, spec.tags))
        current = glance.get(reused.id)
        ours = {k: v for k, v in props.items() if not k.startswith("img_signature")}
        glance.set_properties(current, dict(ours))
        changes.append(Change("reused", current, "Glance already holds these bytes"))
    else:
        current = upload(glance, spec, props, local)
        changes.append(Change("uploaded", current, _verified(local, started)))
    ds = opts.datastore
    changes += rotation.retire_others(glance, current, ds, spec.tags, opts.retire)
    changes += rotation.prune(glance, ds, opts.keep, current.id)
    _report(changes, glance, spec.tags, expect=current.id)
    _register(opts, conn, spec.tags, how)
    return 0


def _verified(local: Digests, started: float) -> str:
    seconds = time.monotonic() - started
    mib = local.size / 2**20
    return f"{mib:.0f} MiB; size, md5 and sha512 as Glance stored them ({seconds:.0f} s)"


def sweep_unfinished(glance: Glance) -> list[Change]:
    """Images an interrupted publish of ours left without data: this machine's whose publish
    is gone, another machine's once they are a day old."""
    changes = []
    host = socket.gethostname()
    for status in UNFINISHED:
        for image in glance.images(status=status):
            uploader = image.properties.get(PROP_UPLOADER)
            if PROP_VERSION not in image.properties or not uploader:
                continue  # not ours
            if not _abandoned(uploader, host, image.created_at):
                continue
            glance.delete(image.id)
            changes.append(Change("removed", image, f"left {status} by an interrupted publish"))
    return changes


def _abandoned(uploader: str, host: str, created_at: str) -> bool:
    where, _, pid = uploader.rpartition(":")
    if where == host:
        return not pid.isdigit() or not Path(f"/proc/{pid}").exists() or int(pid) == os.getpid()
    created = datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return datetime.datetime.now(datetime.UTC) - created > FOREIGN_UPLOAD_AGE


def find_same(
    glance: Glance, spec: ImageSpec, spec_ds: Datastore, local: Digests, cert_uuid: str | None
) -> Image | None:
    """An image Glance holds with these very bytes and disk format (signed with the same
    certificate, if a signature is asked for): the newest."""
    for image in glance.images(os_hash_value=local.sha512):
        if image.status not in ("active", "deactivated") or image.disk_format != spec.disk_format:
            continue
        # Deactivated by someone else, or for another version: not ours to bring back.
        if image.status == "deactivated" and Retirement.of(image, spec_ds.slug) is None:
            continue
        if image.os_hash_algo != "sha512" or image.size != local.size:
            continue
        if cert_uuid and image.properties.get("img_signature_certificate_uuid") != cert_uuid:
            continue
        return image
    return None


class _Reader:
    """The file for requests to stream (its length known: sent with Content-Length, not
    chunked); stops the upload as soon as the command is interrupted."""

    def __init__(self, path: Path, size: int) -> None:
        self.f = path.open("rb")
        self.size, self.sent, self.logged = size, 0, 0.0

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        cancel.check()
        chunk = self.f.read(n if n and n > 0 else 4 * 2**20)
        self.sent += len(chunk)
        if time.monotonic() - self.logged > 10:
            self.logged = time.monotonic()
            log.info("uploading: %d of %d MiB", self.sent >> 20, self.size >> 20)
        return chunk

    def close(self) -> None:
        self.f.close()


def upload(glance: Glance, spec: ImageSpec, props: dict[str, str], local: Digests) -> Image:
    """A new image with the data, or none: on any failure (an interrupt included) the new image
    is deleted; if even that fails it stays queued and the next publish removes it."""
    body = {**spec.body(), **props, PROP_UPLOADER: f"{socket.gethostname()}:{os.getpid()}"}
    image = glance.create(body)
    log.info("created %s; uploading %s", image.label(), spec.path)
    reader: _Reader | None = None
    try:
        reader = _Reader(spec.path, local.size)
        glance.upload(image.id, reader)
        stored = glance.get(image.id)
        mismatch = _compare(stored, local)
        if mismatch:
            raise CloudError(f"Glance stored other bytes than were sent ({mismatch}); deleted")
        return stored
    except BaseException:
        try:
            glance.delete(image.id)
        except CloudError as exc:
            log.warning("%s is left in Glance (%s): the next publish removes it", image.id, exc)
        raise
    finally:
        if reader is not None:
            reader.close()


def _compare(stored: Image, local: Digests) -> str:
    wanted = {
        "status": ("active", stored.status),
        "size": (local.size, stored.size),
        "checksum": (local.md5, stored.checksum),
        "os_hash_algo": ("sha512", stored.os_hash_algo),
        "os_hash_value": (local.sha512, stored.os_hash_value),
    }
    return ", ".join(
        f"{k} {got} instead of {want}" for k, (want, got) in wanted.items() if want != got
    )


def _report(
    changes: list[Change], glance: Glance, tags: tuple[str, ...], expect: str | None = None
) -> None:
    for change in changes:
        print(change.line())
    taken = rotation.chosen(glance.images(tag=list(tags), status="active"), tags)
    if taken is None:
        raise CloudError(f"Trove would find no active image tagged {','.join(tags)}")
    if expect is not None and taken.id != expect:
        raise CloudError(f"Trove would take {taken.label()}, not the published image")
    print(f"Trove takes {taken.label()} for the tags {','.join(tags)}")


def _register(
    opts: PublishOptions, conn: Any, tags: tuple[str, ...], how: tuple[str, Path | None]
) -> None:
    manage = shutil.which("trove-manage")
    if opts.validation_rules is not None:
        rules = str(opts.validation_rules)
    else:
        rules = rules_path(opts.datastore.manager, trove_package_of(manage) if manage else None)
    reg = Registration(opts.datastore, tags, opts.default, rules)
    done, left = register(reg, conn, *how)
    for line in done:
        print(line)
    if left:
        said = "to register the datastore version" if how[0] == "print" else "then"
        if opts.register and how[0] == "print":
            said += " (no trove-manage here and no Trove in the cloud's catalog)"
        print(f"{said}, run:")
        for command in left:
            print(f"  {command}")
