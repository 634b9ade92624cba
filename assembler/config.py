"""The one frozen BuildConfig, made from CLI options, trovestack's environment and defaults.

Nothing else in the project reads argv or the environment.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from assembler.accel import Accel
from assembler.distros import DEFAULT_RELEASE, RELEASES, GuestOS, Release, release_for
from assembler.errors import UsageError
from assembler.formats import ImageFormat, choose_format
from assembler.secrets import hash_password, password_id

GIB = 1024**3


class DockerSource(StrEnum):
    ARCHIVE = "archive"  # the guest archive's docker.io: works with any apt mirror
    DOCKER_CE = "docker-ce"  # Docker's own repository, as trovestack's ubuntu-docker element


class Compression(StrEnum):
    """qcow2 compression. zlib is what every QEMU reads; zstd needs QEMU >= 5.1 on the compute
    nodes. trovestack (diskimage-builder) compresses qcow2 by default too."""

    NONE = "none"
    ZLIB = "zlib"
    ZSTD = "zstd"


class EtcHosts(StrEnum):
    """cloud-init's manage_etc_hosts values, as DIB_CLOUD_INIT_ETC_HOSTS takes them."""

    LOCALHOST = "localhost"
    TEMPLATE = "template"
    TRUE = "true"
    FALSE = "false"


# cloud-init's datasource names (cloudinit/sources); a typo would silently disable instance data.
KNOWN_DATASOURCES = frozenset(
    (
        "NoCloud", "ConfigDrive", "OpenStack", "OpenNebula", "DigitalOcean", "Azure", "AltCloud",
        "OVF", "MAAS", "GCE", "CloudStack", "Ec2", "CloudSigma", "SmartOS", "Bigstep", "Scaleway",
        "AliYun", "Oracle", "Exoscale", "RbxCloud", "UpCloud", "IBMCloud", "Vultr", "LXD", "NWCS",
        "Akamai", "VMware", "Hetzner", "WSL", "CloudCIX", "None",
    )
)  # fmt: skip
DEFAULT_DATASOURCES = "ConfigDrive, OpenStack"
DEFAULT_SIZE = "5G"  # trovestack's GUEST_IMAGESIZE
USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class AgentConfig:
    """The Trove guest agent: where its code comes from, and dev mode's controller."""

    version: str | None  # a trove release on PyPI; None with no source = the release's default
    source: Path | None  # a trove checkout or sdist on this host
    constraints: str | None  # upper-constraints file or URL
    controller_host: str | None  # written to /etc/trove/controller.conf (Trove injects it too)
    controller_trove_path: str  # trovestack's PATH_TROVE: the trove checkout on the controller
    dev_key: Path | None  # dev mode's key pair; None = a new one per build
    authorize_on_controller: bool  # append the guest's public key to HOST_SCP_USERNAME's keys
    mgmt_gateway: str | None  # TROVE_MGMT_GATEWAY
    sync_logs: bool  # SYNC_LOG_TO_CONTROLLER


DEFAULT_PATH_TROVE = "/opt/stack/trove"  # devstack's $DEST/trove, trovestack's default


class SourceKind(StrEnum):
    REGISTRY = "registry"  # pulled over the OCI distribution API
    DOCKER_ARCHIVE = "docker-archive"  # a `docker save` tar on this host
    OCI_LAYOUT = "oci"  # an OCI image layout directory on this host


class EmbedMode(StrEnum):
    """How embedded datastore images land in the guest (README: measured delay and size)."""

    DOCKER_STORE = "docker-store"  # loaded into /var/lib/docker by dockerd at build time
    FIRST_BOOT = "first-boot"  # archives loaded by trove-image-loader at the first boot


@dataclass(frozen=True)
class EmbeddedImage:
    """A datastore image put into the guest image (--datastore-image [SOURCE=]REF): REF is the
    name docker knows it by in the guest; SOURCE where the host fetches it (default: REF)."""

    target: str
    kind: SourceKind
    source: str  # a registry reference, or an absolute path

    def __str__(self) -> str:
        return f"{self.source}={self.target}" if self.source != self.target else self.target


def parse_embedded_image(text: str) -> EmbeddedImage:
    """[SOURCE=]REF, where SOURCE is a reference, docker-archive:PATH, oci:PATH, or a path to a
    `docker save` archive or an OCI layout (skopeo's transport names)."""
    from assembler.oci.reference import Reference

    source, sep, target = text.strip().rpartition("=")
    if not sep:
        source = target
    if not target or not source:
        raise UsageError(f"--datastore-image {text!r}: expected [SOURCE=]REF")
    target = str(Reference.parse(target))
    for prefix, kind in (
        ("docker-archive:", SourceKind.DOCKER_ARCHIVE),
        ("oci:", SourceKind.OCI_LAYOUT),
    ):
        if source.startswith(prefix):
            return EmbeddedImage(target, kind, _existing(source.removeprefix(prefix), text))
    source = source.removeprefix("docker://")
    local = Path(source).expanduser()
    if source.startswith(("/", ".", "~")) or local.exists():
        path = _existing(source, text)
        kind = SourceKind.OCI_LAYOUT if Path(path).is_dir() else SourceKind.DOCKER_ARCHIVE
        return EmbeddedImage(target, kind, path)
    return EmbeddedImage(target, SourceKind.REGISTRY, str(Reference.parse(source)))


def _existing(path: str, text: str) -> str:
    found = Path(path).expanduser().absolute()
    if not found.exists():
        raise UsageError(f"--datastore-image {text!r}: {found} does not exist")
    return str(found)


def parse_embedded_images(texts: list[str], env_value: str | None) -> tuple[EmbeddedImage, ...]:
    """The options, else DIB_TROVE_DOCKER_IMAGES (its entries split by commas or spaces)."""
    entries = list(texts) or re.split(r"[,\s]+", (env_value or "").strip())
    images = tuple(parse_embedded_image(t) for t in entries if t)
    targets = [i.target for i in images]
    twice = {t for t in targets if targets.count(t) > 1}
    if twice:
        raise UsageError(f"datastore image {sorted(twice)[0]} named twice")
    return images


@dataclass(frozen=True)
class BuildConfig:
    release: Release
    dev_mode: bool
    guest_username: str
    output: Path
    image_format: ImageFormat
    # The base: a local path or URL of the operator's (base), else the release's published image
    # (from base_url when given), verified with signing_key instead of the pinned key if given.
    base: str | None
    base_sha256: str | None
    base_url: str | None
    signing_key: Path | None
    refresh: bool
    size_bytes: int
    datasources: tuple[str, ...]
    etc_hosts: EtcHosts
    host_scp_username: str
    mirror: str | None
    docker_source: DockerSource
    accel: Accel
    agent: AgentConfig
    compression: Compression = Compression.ZLIB
    layer_cache: Path | None = None  # None: the user's cache directory
    max_age_days: float = 7.0  # a cached layer of packages older than this is built again
    # host[:port]/repository of an OCI registry sharing layers with other builders, or None.
    cache_registry: str | None = None
    datastore_images: tuple[EmbeddedImage, ...] = ()
    embed_mode: EmbedMode = EmbedMode.DOCKER_STORE
    root_password_hash: str | None = field(default=None, repr=False)
    root_password_id: str | None = field(default=None, repr=False)  # layer-cache key of it

    @property
    def guest_os(self) -> GuestOS:
        return self.release.distro.name


def parse_size(text: str) -> int:
    """'5G', '5', '5120M', '10GiB' -> bytes; a bare number is GB, as GUEST_IMAGESIZE."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"cannot read size {text!r}: use e.g. 5G or 5120M")
    number, unit = int(m.group(1)), (m.group(2) or "G").upper()
    size: int = number * 1024 ** ("KMGT".index(unit) + 1)
    if size <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return size


def parse_datasources(text: str) -> tuple[str, ...]:
    """DIB_CLOUD_INIT_DATASOURCES semantics: a comma-separated list of cloud-init datasources."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError("the datasource list is empty")
    by_lower = {k.lower(): k for k in KNOWN_DATASOURCES}
    canonical = []
    for name in names:
        if name.lower() not in by_lower:
            raise UsageError(f"unknown cloud-init datasource {name!r}")
        canonical.append(by_lower[name.lower()])
    if len(set(canonical)) != len(canonical):
        raise UsageError(f"datasource listed twice in {text!r}")
    return tuple(canonical)


def parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise UsageError(f"{what} must be true or false, not {text!r}")


def default_output(release: Release, dev_mode: bool, fmt: ImageFormat) -> Path:
    """trovestack's $HOME/images/trove-guest-<os>-<release>[-dev].<ext>."""
    suffix = "-dev" if dev_mode else ""
    ext = {ImageFormat.RAW: "raw"}.get(fmt, str(fmt))
    name = f"trove-guest-{release.distro.name}-{release.codename}{suffix}.{ext}"
    return Path.home() / "images" / name


@dataclass
class BuildOptions:
    """What the CLI parsed; None means 'not given' so the environment and defaults apply."""

    guest_os: str | None = None
    release: str | None = None
    dev_mode: bool | None = None
    guest_username: str | None = None
    output: str | None = None
    image_format: str | None = None
    base: str | None = None
    sha256: str | None = None
    base_url: str | None = None
    signing_key: str | None = None
    refresh: bool = False
    size: str | None = None
    datasources: str | None = None
    mirror: str | None = None
    docker_source: str | None = None
    accel: str | None = None
    agent_version: str | None = None
    agent_source: str | None = None
    constraints: str | None = None
    controller_host: str | None = None
    controller_trove_path: str | None = None
    dev_key: str | None = None
    authorize_on_controller: bool = False
    compression: str | None = None
    layer_cache: str | None = None
    max_age_days: float | None = None
    cache_registry: str | None = None
    datastore_images: list[str] = field(default_factory=list)
    embed_mode: str | None = None


def resolve_release(guest_os: str | None, release: str | None) -> Release:
    try:
        os_ = GuestOS((guest_os or GuestOS.UBUNTU).lower())
    except ValueError:
        raise UsageError(
            f"unknown guest OS {guest_os!r}; choose one of {', '.join(GuestOS)}"
        ) from None
    codename = (release or DEFAULT_RELEASE[os_]).lower()
    rel = release_for(os_, codename)
    if rel is None:
        known = ", ".join(r.codename for r in RELEASES.values() if r.distro.name == os_)
        raise UsageError(f"unknown release {codename!r} for {os_}; choose one of {known}")
    return rel


E = TypeVar("E", bound=StrEnum)


def _enum(cls: type[E], value: str, what: str) -> E:
    try:
        return cls(value.lower())
    except ValueError:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(cls)}") from None


def parse_mirror(url: str | None) -> str | None:
    if url is None:
        return None
    if not re.match(r"^(https?|file)://\S+$", url):
        raise UsageError(f"--mirror must be an http(s):// or file:// URL, not {url!r}")
    return url.rstrip("/")


# `--base archive`: built from the distro's package archive (assembler base) in the same
# command. A file of that name is `--base ./archive`.
ARCHIVE_BASE = "archive"


def _local_or_url(base: str | None) -> str | None:
    """A local path made absolute (the build runs elsewhere); URLs pass as they are."""
    if base is None or "://" in base or base == ARCHIVE_BASE:
        return base
    return str(Path(base).expanduser().absolute())


def _path(text: str | None, what: str, must_exist: bool = True) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser().absolute()
    if must_exist and not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    return path


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return parse_bool(env.get(name) or "false", name)


def make_agent_config(opts: BuildOptions, env: Mapping[str, str], dev_mode: bool) -> AgentConfig:
    if opts.agent_version and opts.agent_source:
        raise UsageError("--agent-version and --agent-source exclude each other")
    dev_only = {
        "--controller-host": opts.controller_host,
        "--dev-key": opts.dev_key,
        "--authorize-on-controller": opts.authorize_on_controller or None,
    }
    if not dev_mode:
        given = [name for name, value in dev_only.items() if value]
        if given:
            raise UsageError(f"{', '.join(given)} only apply in dev mode (--dev-mode)")
    return AgentConfig(
        version=opts.agent_version,
        source=_path(opts.agent_source, "--agent-source"),
        constraints=opts.constraints,
        controller_host=opts.controller_host,
        controller_trove_path=opts.controller_trove_path
        or env.get("PATH_TROVE")
        or DEFAULT_PATH_TROVE,
        dev_key=_path(opts.dev_key, "--dev-key"),
        authorize_on_controller=opts.authorize_on_controller,
        mgmt_gateway=env.get("TROVE_MGMT_GATEWAY") or None,
        sync_logs=parse_bool(
            env.get("SYNC_LOG_TO_CONTROLLER") or "false", "SYNC_LOG_TO_CONTROLLER"
        ),
    )


def make_config(opts: BuildOptions, env: Mapping[str, str]) -> BuildConfig:
    """Validate everything at the edge and freeze it."""
    release = resolve_release(opts.guest_os, opts.release)
    dev_mode = True if opts.dev_mode is None else opts.dev_mode
    # trovestack's default guest user is "ubuntu" whatever the OS.
    username = opts.guest_username or "ubuntu"
    if not USERNAME_RE.match(username):
        raise UsageError(f"invalid guest username {username!r}")
    explicit_output = Path(opts.output).expanduser() if opts.output else None
    fmt = choose_format(opts.image_format, explicit_output)
    output = explicit_output or default_output(release, dev_mode, fmt)
    output = output.absolute()
    size_text = opts.size or env.get("GUEST_IMAGESIZE") or DEFAULT_SIZE
    datasources = parse_datasources(
        opts.datasources or env.get("DIB_CLOUD_INIT_DATASOURCES") or DEFAULT_DATASOURCES
    )
    etc_hosts_text = env.get("DIB_CLOUD_INIT_ETC_HOSTS") or EtcHosts.LOCALHOST
    etc_hosts = _enum(EtcHosts, etc_hosts_text, "DIB_CLOUD_INIT_ETC_HOSTS value")
    accel_text = opts.accel or env.get("ASSEMBLER_ACCEL") or Accel.AUTO
    root_password = env.get("TROVE_ROOT_PASSWORD")
    root_hash = hash_password(root_password) if root_password else None
    compression = _enum(Compression, opts.compression or "zlib", "compression")
    if compression is not Compression.NONE and fmt is not ImageFormat.QCOW2:
        if opts.compression:
            raise UsageError(f"--compression applies to qcow2 only, not {fmt}")
        compression = Compression.NONE
    max_age = opts.max_age_days if opts.max_age_days is not None else 7.0
    if max_age < 0:
        raise UsageError("--max-age must not be negative")
    return BuildConfig(
        release=release,
        dev_mode=dev_mode,
        guest_username=username,
        output=output,
        image_format=fmt,
        base=_local_or_url(opts.base),
        base_sha256=opts.sha256,
        base_url=opts.base_url,
        signing_key=Path(opts.signing_key).expanduser().absolute() if opts.signing_key else None,
        refresh=opts.refresh,
        size_bytes=parse_size(size_text),
        datasources=datasources,
        etc_hosts=etc_hosts,
        host_scp_username=env.get("HOST_SCP_USERNAME") or getpass.getuser(),
        mirror=parse_mirror(opts.mirror),
        docker_source=_enum(DockerSource, opts.docker_source or "archive", "docker source"),
        accel=_enum(Accel, str(accel_text), "accelerator"),
        agent=make_agent_config(opts, env, dev_mode),
        compression=compression,
        layer_cache=_path(
            opts.layer_cache or env.get("ASSEMBLER_LAYER_CACHE"), "--layer-cache", must_exist=False
        ),
        max_age_days=max_age,
        cache_registry=_cache_registry(opts.cache_registry or env.get("ASSEMBLER_CACHE_REGISTRY")),
        datastore_images=parse_embedded_images(
            opts.datastore_images, env.get("DIB_TROVE_DOCKER_IMAGES")
        ),
        embed_mode=_enum(EmbedMode, opts.embed_mode or EmbedMode.DOCKER_STORE, "embed mode"),
        root_password_hash=root_hash,
        root_password_id=password_id(root_password) if root_password else None,
    )


def _cache_registry(text: str | None) -> str | None:
    """The --cache-registry location, checked now (a typo fails before any work)."""
    if not text:
        return None
    from assembler.fleet.remote import parse_location

    host, repository = parse_location(text)
    return f"{host}/{repository}"
