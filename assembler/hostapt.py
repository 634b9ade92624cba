"""apt on the host, for the guest: resolve and download a package set natively, against the
guest's own dpkg status, architecture and trusted keys and the build's sources, so the appliance
runs no `apt-get update` and downloads nothing; only dpkg's own work stays under emulation.

apt verifies every index and download as usual (the guest's keys, never the host's). Its lists
and archives are kept per source set under $XDG_CACHE_HOME/trove-image-assembler/packages, so a
repeated build downloads nothing. apt takes a cached .deb of the right size as it is, so the
build hashes each against the verified index itself and fetches again what does not match.
Each .deb the guest gets is then repacked with a zstd data member (assembler.debrepack), cached
by the original's sha256 with its own sha256 beside.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from assembler import debrepack
from assembler.basefacts import BaseFacts
from assembler.errors import BuildError, CommandError
from assembler.manifest import sha256_file
from assembler.paths import cache_dir
from assembler.run import run

log = logging.getLogger(__name__)

# How the data members reach dpkg: "none" spares the appliance decompression for ~4x the bytes
# through its file channel; "zstd" decompresses ~10x faster than xz at ~1.3x xz's size.
REPACK_CODEC = "zstd"
# `apt-get -s` prints each package it would unpack as
#   Inst name [installed-version] (version origin [arch])
INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([^\]]+)\]\)", re.MULTILINE)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    deb: Path  # as apt fetched and verified it
    sha256: str
    repacked: Path  # what the guest gets


@dataclass(frozen=True)
class Fetched:
    packages: tuple[Package, ...]
    area: str  # the cache area (per source set)

    def record(self) -> list[dict[str, str]]:
        return [
            {"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256}
            for p in self.packages
        ]


def area_for(sources: str, arch: str, root: Path | None = None) -> Path:
    digest = hashlib.sha256(f"{arch}\n{sources}".encode()).hexdigest()[:16]
    return (root or cache_dir() / "packages") / f"{arch}-{digest}"


def apt_options(area: Path, etc: Path, status: Path, arch: str) -> list[str]:
    """Everything apt reads or writes, pointed at the build's files: the host's own sources,
    keys, preferences, configuration and dpkg database are never read."""
    options = {
        "Dir::Etc::main": etc / "apt.conf",
        "Dir::Etc::Parts": etc / "apt.conf.d",
        "Dir::Etc::SourceList": etc / "sources.list",
        "Dir::Etc::SourceParts": etc / "sources.list.d",
        "Dir::Etc::Trusted": etc / "trusted.gpg",
        "Dir::Etc::TrustedParts": etc / "trusted.gpg.d",
        "Dir::Etc::Preferences": etc / "preferences",
        "Dir::Etc::PreferencesParts": etc / "preferences.d",
        "Dir::State": area / "state",
        "Dir::State::Lists": area / "lists",
        "Dir::State::status": status,
        "Dir::Cache": area / "cache",
        "Dir::Cache::Archives": area / "archives",
        "Dir::Log": etc / "log",
        "APT::Architecture": arch,
        "APT::Architectures::": arch,
        "APT::Install-Recommends": "false",
        "APT::Sandbox::User": "root",  # the cache lives in the builder's home, not _apt's
        "Acquire::Languages": "none",
        "Acquire::Retries": "3",
        # The area is ours and flock'ed below; apt's locks would also take the host's dpkg lock.
        "Debug::NoLocking": "true",
    }
    return [f"-o{k}={v}" for k, v in options.items()]


def _layout(etc: Path, sources: str, trusted: list[tuple[str, bytes]], status: Path) -> Path:
    for sub in ("apt.conf.d", "sources.list.d", "trusted.gpg.d", "preferences.d", "log"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    (etc / "apt.conf").write_text("")
    (etc / "sources.list").write_text(sources)
    for name, data in trusted:
        (etc / "trusted.gpg.d" / name).write_bytes(data)
    copy = etc / "status"
    copy.write_bytes(status.read_bytes())  # apt may rewrite nothing, but never the cache's copy
    return copy


@contextmanager
def _locked(area: Path) -> Iterator[None]:
    area.mkdir(parents=True, exist_ok=True)
    with (area / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(
    base: BaseFacts,
    sources: str,
    packages: list[str],
    scratch: Path,
    extra_keys: Sequence[tuple[str, bytes]] = (),
    root: Path | None = None,
) -> Fetched:
    """Resolve `packages` for the guest described by `base` and have every .deb it needs."""
    area = area_for(sources, base.arch, root)
    trusted = [(p.name, p.read_bytes()) for p in base.trusted()] + list(extra_keys)
    etc = scratch / "apt-etc"
    status = _layout(etc, sources, trusted, base.status)
    for sub in ("state", "lists/partial", "cache", "archives/partial"):
        (area / sub).mkdir(parents=True, exist_ok=True)
    opts = apt_options(area, etc, status, base.arch)
    with _locked(area):
        _apt(opts, "update --error-on=any", "resolving packages on the host: apt-get update")
        _apt(opts, "install --download-only " + shlex.join(packages), "downloading packages")
        plan = _apt(opts, "install --simulate " + shlex.join(packages), "resolving packages")
        chosen = INST.findall(plan)
        expected = _index_hashes(opts, chosen)
        wanted = _verified(opts, area, chosen, expected, packages)
        with ThreadPoolExecutor(2) as pool:  # lzma and zstd release the GIL: two cores
            found = tuple(pool.map(_repacked, wanted))
    log.info(
        "host packages: %d to install (%.0f MiB as fetched)",
        len(found),
        sum(p.deb.stat().st_size for p in found) / 2**20,
    )
    return Fetched(found, area.name)


def _apt(opts: list[str], args: str, what: str) -> str:
    argv = ["apt-get", "-q", "-y", *opts, *shlex.split(args)]
    try:
        return run(argv, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"})
    except CommandError as exc:
        lines = [x for x in exc.stderr.splitlines() if x.strip()]
        raise BuildError("packages", f"{what}: {' | '.join(lines[-3:]) or 'no output'}") from exc


def _index_hashes(opts: list[str], chosen: list[tuple[str, str, str]]) -> dict[str, str]:
    """{deb file name: SHA256} from the verified index: apt trusts a cached .deb of the right
    size without hashing it, so the build hashes it against the index itself."""
    if not chosen:
        return {}
    args = [f"{name}:{arch}={version}" for name, version, arch in chosen]
    argv = ["apt-cache", *opts, "show", "--no-all-versions", *args]
    try:
        text = run(argv, env={**os.environ, "LC_ALL": "C"})
    except CommandError as exc:
        raise BuildError("packages", f"reading the package index: {exc}") from exc
    hashes: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if {"Package", "Version", "Architecture", "SHA256"} <= fields.keys():
            name = deb_name(fields["Package"], fields["Version"], fields["Architecture"])
            hashes[name] = fields["SHA256"]
    return hashes


def _verified(
    opts: list[str],
    area: Path,
    chosen: list[tuple[str, str, str]],
    expected: dict[str, str],
    packages: list[str],
) -> list[tuple[Path, str, str, str, str]]:
    """Each chosen package's .deb, its sha256 that of the index (fetched again once if not)."""
    for attempt in (1, 2):
        out, bad = [], []
        for name, version, arch in chosen:
            deb, bare = _package(area, name, version, arch)
            digest = sha256_file(deb)
            if expected.get(deb.name) != digest:
                bad.append(deb)
            out.append((deb, bare, version, arch, digest))
        if not bad:
            return out
        if attempt == 2:
            raise BuildError("packages", f"{bad[0].name} does not match the archive's index")
        log.warning("cached packages damaged, fetched again: %s", [d.name for d in bad])
        for deb in bad:
            deb.unlink()
        _apt(opts, "install --download-only " + shlex.join(packages), "downloading packages")
    raise AssertionError("unreachable")


def deb_name(name: str, version: str, arch: str) -> str:
    """apt's file name for a package in Dir::Cache::Archives (an epoch's ':' is quoted)."""
    quoted = version.replace(":", "%3a")
    return f"{name}_{quoted}_{arch}.deb"


def _package(area: Path, name: str, version: str, arch: str) -> tuple[Path, str]:
    bare = name.split(":")[0]
    deb = area / "archives" / deb_name(bare, version, arch)
    if not deb.is_file():
        raise BuildError("packages", f"apt resolved {name} {version} but {deb.name} is missing")
    return deb, bare


def _repacked(item: tuple[Path, str, str, str, str]) -> Package:
    deb, name, version, arch, sha256 = item
    plain_dir = deb.parent.parent / f"repacked-{REPACK_CODEC}"
    plain_dir.mkdir(exist_ok=True)
    plain = plain_dir / f"{sha256}.deb"
    check = plain.with_suffix(".sha256")
    try:
        good = check.read_text().strip() == sha256_file(plain)
    except OSError:
        good = False
    if not good:
        if plain.exists():
            log.warning("repacked %s is damaged or unchecked: repacked again", deb.name)
        try:
            debrepack.repack(deb, plain, REPACK_CODEC)
        except debrepack.DebError as exc:
            raise BuildError("packages", f"cannot repack {deb.name}: {exc}") from exc
        check.write_text(sha256_file(plain) + "\n")
    return Package(name, version, arch, deb, sha256, plain)
