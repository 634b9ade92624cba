"""Command line: `assembler [build] ...`, `assembler base ...`. Errors become one line."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from assembler import __version__, cancel, leftovers, progress
from assembler.accel import Accel
from assembler.config import (
    DEFAULT_DATASOURCES,
    DEFAULT_SIZE,
    BuildConfig,
    BuildOptions,
    Compression,
    DockerSource,
    EmbedMode,
    make_config,
    parse_bool,
    parse_mirror,
    resolve_release,
)
from assembler.distros import RELEASES, GuestOS
from assembler.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    AssemblerError,
    NoSpaceError,
    UsageError,
)
from assembler.formats import ImageFormat
from assembler.layouts import LAYOUTS, Firmware

log = logging.getLogger("assembler")
COMMANDS = ("build", "base", "fetch", "boot-test", "cache", "publish", "matrix")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as our one-line UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--debug", action="store_true", help="log every command; tracebacks")
    p.add_argument("--accel", choices=list(Accel), help="auto (probe KVM), kvm or tcg")


def _base_source(p: argparse.ArgumentParser) -> None:
    """Where the base image comes from, for `build` and `fetch`."""
    p.add_argument("--base", help="your own base image: PATH, file:// or http(s):// URL")
    p.add_argument("--sha256", help="checksum of a remote --base")
    p.add_argument("--base-url", help="a mirror laid out like the publisher's image site")
    p.add_argument("--signing-key", help="OpenPGP key trusted instead of the publisher's")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-check the published checksums; build: install packages afresh too",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="assembler", description="Build OpenStack Trove guest images.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    b = sub.add_parser("build", help="build a Trove guest image (the default command)")
    b.add_argument("pos_guest_os", nargs="?", metavar="guest_os")
    b.add_argument("pos_release", nargs="?", metavar="release")
    b.add_argument("pos_dev_mode", nargs="?", metavar="dev_mode")
    b.add_argument("pos_guest_username", nargs="?", metavar="guest_username")
    b.add_argument("pos_output", nargs="?", metavar="output_image_path")
    b.add_argument("--guest-os", choices=list(GuestOS))
    b.add_argument("--release", choices=sorted(RELEASES))
    b.add_argument("--dev-mode", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--guest-username")
    b.add_argument("-o", "--output")
    b.add_argument("--format", dest="image_format", choices=list(ImageFormat))
    _base_source(b)
    b.add_argument("--size", help=f"disk size (default {DEFAULT_SIZE}, or GUEST_IMAGESIZE)")
    b.add_argument(
        "--datasources", help=f'cloud-init datasources (default "{DEFAULT_DATASOURCES}")'
    )
    b.add_argument("--mirror", help="guest package archive URL for the build")
    b.add_argument("--docker-source", choices=list(DockerSource))
    b.add_argument("--agent-version", help="trove release from PyPI (default: per guest release)")
    b.add_argument("--agent-source", help="a trove checkout or sdist instead of a release")
    b.add_argument("--constraints", help="upper-constraints file or URL for the agent's venv")
    b.add_argument("--controller-host", help="dev mode: the controller the guest fetches code from")
    b.add_argument("--controller-trove-path", help="dev mode: trove checkout on the controller")
    b.add_argument("--dev-key", help="dev mode: an ed25519 private key to use (default: new)")
    b.add_argument(
        "--authorize-on-controller",
        action="store_true",
        help="dev mode: let the guest's key log in as HOST_SCP_USERNAME on this host",
    )
    b.add_argument(
        "--compression",
        choices=list(Compression),
        help="qcow2 compression (default zlib, as trovestack; zstd needs QEMU >= 5.1)",
    )
    b.add_argument(
        "--datastore-image",
        action="append",
        default=[],
        metavar="[SOURCE=]REF",
        help="embed a datastore image (repeatable; or DIB_TROVE_DOCKER_IMAGES): docker knows it "
        "as REF in the guest; SOURCE is a reference, docker-archive:PATH or oci:PATH",
    )
    b.add_argument(
        "--embed-mode",
        choices=[str(m) for m in EmbedMode],
        help="embedded images: into docker's store at build time (docker-store, the default) "
        "or loaded at the first boot (first-boot)",
    )
    b.add_argument("--layer-cache", help="layer cache directory (default: in ~/.cache)")
    # Read before the other options (expand_matrix): a cell's arguments stand in for them.
    b.add_argument("--matrix", metavar="FILE", help="build one cell of this matrix file")
    b.add_argument("--cell", help="--matrix: the cell's id (see `assembler matrix FILE`)")
    b.add_argument("--stage", help="--matrix: the stage of --cell-index")
    b.add_argument(
        "--cell-index",
        help="--matrix: the cell's index within --stage (default $JOB_COMPLETION_INDEX)",
    )
    b.add_argument(
        "--cache-registry",
        metavar="HOST/REPO",
        help="share layers with other builders through this OCI registry repository: pull a "
        "layer found there, push what it lacks after a build (default $ASSEMBLER_CACHE_REGISTRY; "
        "logins from docker's config.json)",
    )
    b.add_argument(
        "--max-age",
        type=float,
        dest="max_age_days",
        metavar="DAYS",
        help="rebuild a cached layer of packages older than this (default 7; --refresh: now)",
    )
    b.add_argument(
        "--boot-test",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="boot the new image under QEMU and check it (`make image` does)",
    )
    _common(b)

    base = sub.add_parser("base", help="build a base cloud image from a package archive")
    base.add_argument("guest_os", choices=list(GuestOS))
    base.add_argument("release", choices=sorted(RELEASES))
    base.add_argument("-o", "--output", help="where to copy it (default: print the cached path)")
    base.add_argument("--mirror", help="package archive URL (default: the distro's)")
    base.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        help="disk shape (default: the release's cloud images': debian, jammy or noble)",
    )
    _common(base)

    f = sub.add_parser("fetch", help="download and verify the base image; print its path")
    f.add_argument("--guest-os", choices=list(GuestOS))
    f.add_argument("--release", choices=sorted(RELEASES))
    _base_source(f)
    f.add_argument("-v", "--debug", action="store_true", help="log every request; tracebacks")

    t = sub.add_parser("boot-test", help="boot an image under QEMU as Nova would for Trove")
    t.add_argument("image")
    t.add_argument(
        "--config-drive",
        action="store_true",
        help="instance data on a config drive (default: the metadata service)",
    )
    t.add_argument("--guest-username", help="default: the image's manifest, else ubuntu")
    t.add_argument("--report", help="write the report as JSON here")
    t.add_argument("--junit", help="write the report as JUnit XML here")
    t.add_argument("--artifacts", help="where console logs and screendumps of a failure go")
    t.add_argument(
        "--timeout", type=float, help="at most this many seconds from QEMU's start to the facts"
    )
    t.add_argument(
        "--stall", type=float, help="give up after this many seconds without progress (240)"
    )
    t.add_argument("--cpus", type=int, default=2, help="the guest's vCPUs (2)")
    t.add_argument(
        "--firmware",
        choices=list(Firmware),
        default=Firmware.BIOS,
        help="boot with SeaBIOS (bios, the default) or OVMF (uefi: hw_firmware_type=uefi)",
    )
    t.add_argument(
        "--leak-forward",
        action="store_true",
        help="test the network-isolation check: forward a probed address too (it must fail)",
    )
    t.add_argument(
        "--rabbit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start a private RabbitMQ on loopback for the agent (default: if the image has one)",
    )
    t.add_argument("--transport-url", help="the agent's bus as the guest reaches it (no broker)")
    d = t.add_argument_group("a database created through Trove's prepare")
    d.add_argument(
        "--datastore", metavar="MANAGER:VERSION", help="e.g. postgresql:15, mariadb:10.11"
    )
    d.add_argument(
        "--registry",
        metavar="HOST:PORT",
        help="an operator's registry the guest pulls from (default: a private one on loopback)",
    )
    d.add_argument(
        "--no-registry",
        action="store_true",
        help="no registry at all: the image must embed the datastore image",
    )
    d.add_argument(
        "--datastore-source",
        metavar="PATH|test-double:NAME",
        help="what to push to the registry: a docker save archive or OCI layout "
        "(default: the manager's test double, built from Debian's packages)",
    )
    d.add_argument("--docker-image", help="the agent's [<manager>] docker_image (a repository)")
    d.add_argument(
        "--insecure-registry",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="name the registry in the guest's /etc/docker/daemon.json, as Trove's "
        "docker_insecure_registries does (default: yes)",
    )
    d.add_argument(
        "--prepare-wait",
        type=float,
        default=900.0,
        help="the agent's state_change_wait_time in seconds (900: emulation is slow)",
    )
    d.add_argument("--memory", type=int, default=1024, help="the guest's RAM in MB (1024)")
    d.add_argument(
        "--fault",
        action="append",
        default=[],
        help="break the run on purpose, for the harness's own tests: prepare-without-user",
    )
    _common(t)

    c = sub.add_parser("cache", help="list or prune the layer cache")
    c.add_argument("action", choices=("list", "prune"))
    c.add_argument("--layer-cache", help="layer cache directory (default: in ~/.cache)")
    c.add_argument(
        "--max-size",
        default="20G",
        help="prune: least recently used layers go until the cache fits (default 20G)",
    )
    c.add_argument("--older-than", type=float, metavar="DAYS", help="prune: unused for DAYS")
    c.add_argument("--all", action="store_true", help="prune: every layer not in use")
    c.add_argument(
        "--registry",
        nargs="?",
        const="",
        metavar="HOST/REPO",
        help="prune the shared registry instead (default $ASSEMBLER_CACHE_REGISTRY): keep the "
        "--keep newest layers of each slot of --matrix, and what they lie on",
    )
    c.add_argument("--matrix", help="prune --registry: the matrix file whose cells stay")
    c.add_argument("--keep", type=int, default=2, help="prune --registry: per slot (default 2)")
    c.add_argument("-v", "--debug", action="store_true", help="tracebacks")

    m = sub.add_parser("matrix", help="print a build matrix's cells, stages and layer slots")
    m.add_argument("file", help="the matrix file (TOML; see the README)")
    m.add_argument("--json", action="store_true", help="as JSON (a CI generator job reads it)")
    m.add_argument(
        "--emit",
        choices=("github", "github-run", "github-output", "kubernetes", "zuul"),
        help="print a CI definition that builds the cells, stage by stage (github-output: "
        "the generator job's outputs)",
    )
    m.add_argument("-v", "--debug", action="store_true", help="tracebacks")

    _publish_parser(sub)
    return parser


def _publish_parser(sub: Any) -> None:
    from assembler.publish.rotation import Retire

    p = sub.add_parser(
        "publish", help="register a built image in Glance (verified) and its datastore version"
    )
    p.add_argument("image", nargs="?", help="a built image, its manifest beside it")
    p.add_argument("--datastore", required=True, metavar="NAME:VERSION", help="e.g. mysql:8.4")
    p.add_argument("--manager", help="the datastore's manager (default: its name)")
    p.add_argument("--os-cloud", help="a cloud of clouds.yaml (default: OS_CLOUD, else OS_*)")
    p.add_argument("--name", help="the Glance image's name (default: trove-guest-OS-RELEASE…)")
    p.add_argument("--tag", action="append", default=[], help="another tag (beside trove, NAME)")
    p.add_argument(
        "--visibility",
        choices=("private", "shared", "community", "public"),
        default="private",
        help="who sees the image (default private, as the original document has it)",
    )
    p.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        help="hw_firmware_type for an image that boots with both (default: bios)",
    )
    p.add_argument(
        "--retire",
        choices=list(Retire),
        default=Retire.UNTAG,
        help="how older images with the tags leave Trove's choice (default: untag)",
    )
    p.add_argument("--keep", type=int, metavar="N", help="keep N retired images; delete older")
    p.add_argument(
        "--rollback", action="store_true", help="Trove takes the image retired last again"
    )
    p.add_argument("--sign-key", help="PEM RSA private key: sign the image bytes (RSA-PSS)")
    p.add_argument("--sign-cert-uuid", help="the key manager's id of the signing certificate")
    p.add_argument(
        "--register",
        action="store_true",
        help="create or update the datastore version (else print the commands)",
    )
    p.add_argument(
        "--register-with",
        choices=("auto", "trove-manage", "api"),
        default="auto",
        help="trove-manage on a controller, Trove's management API (default: what is there)",
    )
    p.add_argument("--default", action="store_true", help="the datastore's default version")
    p.add_argument("--trove-config", help="trove.conf for trove-manage (/etc/trove/trove.conf)")
    p.add_argument("--validation-rules", help="the manager's validation-rules.json")
    p.add_argument("-v", "--debug", action="store_true", help="log every request; tracebacks")


def _merge(option: str | None, positional: str | None, name: str) -> str | None:
    if option is not None and positional is not None and option != positional:
        raise UsageError(f"{name} given twice: {positional!r} and {option!r}")
    return option if option is not None else positional


def build_options(ns: argparse.Namespace) -> BuildOptions:
    dev_mode = ns.dev_mode
    if ns.pos_dev_mode is not None:
        pos = parse_bool(ns.pos_dev_mode, "dev_mode")
        if dev_mode is not None and dev_mode != pos:
            raise UsageError("dev_mode given twice with different values")
        dev_mode = pos
    return BuildOptions(
        guest_os=_merge(ns.guest_os, ns.pos_guest_os, "guest_os"),
        release=_merge(ns.release, ns.pos_release, "release"),
        dev_mode=dev_mode,
        guest_username=_merge(ns.guest_username, ns.pos_guest_username, "guest_username"),
        output=_merge(ns.output, ns.pos_output, "output"),
        image_format=ns.image_format,
        base=ns.base,
        sha256=ns.sha256,
        base_url=ns.base_url,
        signing_key=ns.signing_key,
        refresh=ns.refresh,
        size=ns.size,
        datasources=ns.datasources,
        mirror=ns.mirror,
        docker_source=ns.docker_source,
        accel=ns.accel,
        agent_version=ns.agent_version,
        agent_source=ns.agent_source,
        constraints=ns.constraints,
        controller_host=ns.controller_host,
        controller_trove_path=ns.controller_trove_path,
        dev_key=ns.dev_key,
        authorize_on_controller=ns.authorize_on_controller,
        compression=ns.compression,
        layer_cache=ns.layer_cache,
        max_age_days=ns.max_age_days,
        cache_registry=ns.cache_registry,
        datastore_images=ns.datastore_image,
        embed_mode=ns.embed_mode,
    )


def cmd_build(ns: argparse.Namespace) -> int:
    from assembler.build import build

    cfg: BuildConfig = make_config(build_options(ns), os.environ)
    manifest = build(cfg)
    convert = next((s.seconds for s in manifest.steps if s.name == "convert"), None)
    progress.print_summary(manifest.layers, convert)
    out = manifest.output
    print(f"image: {out['path']} ({out['format']}, {out['size']} bytes)")
    print(f"manifest: {out['path']}.manifest.json")
    if ns.boot_test:
        from assembler.boottest.harness import BootTestOptions, run_boot_test

        report = run_boot_test(BootTestOptions(image=cfg.output, accel=cfg.accel))
        print(report.table())
        if not report.passed:
            return EXIT_FAILED
    print(f"publish it: assembler publish {out['path']} --datastore NAME:VERSION --register")
    return EXIT_OK


def cmd_base(ns: argparse.Namespace) -> int:
    from assembler import accel
    from assembler.base import BaseSpec, cached_base

    release = resolve_release(ns.guest_os, ns.release)
    spec = BaseSpec(release=release, mirror=parse_mirror(ns.mirror), layout=ns.layout)
    requested = Accel(ns.accel or os.environ.get("ASSEMBLER_ACCEL") or Accel.AUTO)
    path = cached_base(spec, accel.resolve(requested))
    if ns.output:
        out = Path(ns.output).expanduser().absolute()
        tmp = leftovers.partial(out)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        path = out
    print(path)
    return EXIT_OK


def cmd_fetch(ns: argparse.Namespace) -> int:
    from assembler.fetch import resolve_base

    key = Path(ns.signing_key).expanduser() if ns.signing_key else None
    release = resolve_release(ns.guest_os, ns.release)
    fetched = resolve_base(release, ns.base, ns.sha256, ns.base_url, key, ns.refresh)
    print(fetched.path)
    return EXIT_OK


def cmd_boot_test(ns: argparse.Namespace) -> int:
    from assembler.boottest.datastore_launch import DatastoreOptions
    from assembler.boottest.harness import BootTestOptions, Mode, run_boot_test
    from assembler.boottest.vm import Timeouts

    limits = {"ceiling": ns.timeout, "stall": ns.stall}
    timeouts = Timeouts(**{k: v for k, v in limits.items() if v})
    if ns.cpus < 1:
        raise UsageError(f"--cpus must be at least 1, not {ns.cpus}")
    report_path = Path(ns.report).absolute() if ns.report else None
    if ns.memory < 256:
        raise UsageError(f"--memory must be at least 256 MB, not {ns.memory}")
    if ns.prepare_wait <= 0:
        raise UsageError("--prepare-wait must be positive")
    datastore = None
    if ns.datastore:
        datastore = DatastoreOptions(
            spec=ns.datastore,
            registry=ns.registry,
            use_registry=not ns.no_registry,
            source=ns.datastore_source,
            docker_image=ns.docker_image,
            insecure_registry=ns.insecure_registry,
            wait=ns.prepare_wait,
            faults=tuple(ns.fault),
        )
    elif ns.registry or ns.no_registry or ns.datastore_source or ns.fault:
        raise UsageError(
            "--registry, --no-registry, --datastore-source and --fault need --datastore"
        )
    opts = BootTestOptions(
        image=Path(ns.image).expanduser().absolute(),
        mode=Mode.CONFIG_DRIVE if ns.config_drive else Mode.METADATA,
        accel=Accel(ns.accel or os.environ.get("ASSEMBLER_ACCEL") or Accel.AUTO),
        guest_username=ns.guest_username,
        artifacts=Path(ns.artifacts).absolute() if ns.artifacts else None,
        timeouts=timeouts,
        cpus=ns.cpus,
        rabbit=ns.rabbit,
        transport_url=ns.transport_url,
        datastore=datastore,
        memory_mb=ns.memory,
        firmware=Firmware(ns.firmware),
        leak_forward=ns.leak_forward,
        **({"docker_image": ns.docker_image} if ns.docker_image and not datastore else {}),
    )
    report = run_boot_test(opts, report_path)
    print(report.table())
    if report_path:
        report.write_json(report_path)
    if ns.junit:
        report.write_junit(Path(ns.junit))
    for name, path in report.artifacts.items():
        print(f"kept {name}: {path}", file=sys.stderr)
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_cache(ns: argparse.Namespace) -> int:
    from assembler.layers import LayerCache, describe, parse_bytes

    if ns.registry is not None:
        return _prune_registry(ns)

    where = ns.layer_cache or os.environ.get("ASSEMBLER_LAYER_CACHE")
    root = Path(where).expanduser().absolute() if where else None
    if root is not None and not root.is_dir():
        raise UsageError(f"layer cache {root} does not exist")
    cache = LayerCache(root)
    if ns.action == "prune":
        max_bytes = 0 if ns.all else parse_bytes(ns.max_size)
        if ns.older_than is not None and ns.older_than < 0:
            raise UsageError("--older-than must not be negative")
        for name in cache.prune(max_bytes, ns.older_than):
            print(f"removed {name}")
    print(describe(cache))
    return EXIT_OK


def _prune_registry(ns: argparse.Namespace) -> int:
    from assembler.fleet import matrix as matrix_mod
    from assembler.fleet.artifact import KIND
    from assembler.fleet.prune import prune
    from assembler.fleet.remote import ENV, LayerRegistry

    if ns.action != "prune":
        raise UsageError("--registry goes with `cache prune`")
    where = ns.registry or os.environ.get(ENV)
    if not where:
        raise UsageError(f"--registry names no registry and ${ENV} is not set")
    if not ns.matrix:
        raise UsageError("prune --registry needs --matrix: the cells whose layers stay")
    if ns.keep < 1:
        raise UsageError("--keep must be at least 1")
    planned = matrix_mod.plan(matrix_mod.load(Path(ns.matrix)), config_of)
    slots = {s for p in planned for _, s in p.slots if s}
    bases = {
        matrix_mod.base_slot(config_of(list(p.cell.argv))).removeprefix("archive:") for p in planned
    }
    shared = LayerRegistry.at(where)
    gone = prune(shared, slots, bases, ns.keep)
    for f in gone:
        kind = f.artifact.annotations.get(KIND, "?")
        print(f"deleted {shared.where}:{f.tag} ({kind}, built {f.artifact.created_iso})")
    print(
        f"{len(gone)} manifests deleted from {shared.where}; the registry frees their blobs "
        "when it collects garbage (docker-registry: garbage-collect --delete-untagged)"
    )
    return EXIT_OK


def config_of(argv: list[str]) -> BuildConfig:
    """The build configuration `assembler build ARGV` would use."""
    return make_config(build_options(_parser().parse_args(["build", *argv])), os.environ)


def cmd_matrix(ns: argparse.Namespace) -> int:
    from assembler.fleet import matrix as matrix_mod

    matrix = matrix_mod.load(Path(ns.file))
    planned = matrix_mod.plan(matrix, config_of)
    if ns.emit:
        from assembler.fleet.emit import EMITTERS

        print(EMITTERS[ns.emit](matrix, planned), end="")
    elif ns.json:
        print(json.dumps(matrix_mod.as_json(planned), indent=1))
    else:
        print(matrix_mod.describe(planned))
    return EXIT_OK


def expand_matrix(args: list[str]) -> list[str]:
    """`build --matrix FILE --cell ID` (or `--stage S --cell-index I`, I defaulting to the
    Indexed Job's $JOB_COMPLETION_INDEX) -> `build <the cell's arguments> <the others>`."""
    if args[:1] != ["build"] or "--matrix" not in args:
        return args
    from assembler.fleet import matrix as matrix_mod

    rest, picked = matrix_mod.take_options(
        args[1:], ("--matrix", "--cell", "--stage", "--cell-index")
    )
    matrix = matrix_mod.load(Path(picked["--matrix"]))
    if "--cell" in picked:
        cell = matrix.cell(picked["--cell"])
    else:
        index = picked.get("--cell-index", os.environ.get("JOB_COMPLETION_INDEX"))
        if "--stage" not in picked or index is None:
            raise UsageError("--matrix needs --cell ID, or --stage S with --cell-index I")
        cell = matrix_mod.pick(matrix_mod.plan(matrix, config_of), picked["--stage"], index)
    return ["build", *cell.argv, *rest]


def cmd_publish(ns: argparse.Namespace) -> int:
    from assembler.publish.command import PublishOptions, publish
    from assembler.publish.rotation import Retire
    from assembler.publish.spec import parse_datastore

    if ns.rollback and ns.image:
        raise UsageError("--rollback takes no IMAGE: it goes back to the image retired last")
    if ns.keep is not None and ns.keep < 0:
        raise UsageError("--keep must not be negative")

    def path(value: str | None) -> Path | None:
        return Path(value).expanduser().absolute() if value else None

    opts = PublishOptions(
        datastore=parse_datastore(ns.datastore, ns.manager),
        image=path(ns.image),
        cloud=ns.os_cloud,
        name=ns.name,
        extra_tags=tuple(ns.tag),
        visibility=ns.visibility,
        firmware=ns.firmware,
        retire=Retire(ns.retire),
        keep=ns.keep,
        rollback=ns.rollback,
        sign_key=path(ns.sign_key),
        sign_cert_uuid=ns.sign_cert_uuid,
        register=ns.register,
        register_with=ns.register_with,
        default=ns.default,
        trove_config=path(ns.trove_config),
        validation_rules=path(ns.validation_rules),
    )
    return publish(opts)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# How long an interrupted command may take to stop its children and remove its files.
UNWIND_SECONDS = 120.0


def _run_in_worker(handler: Callable[[argparse.Namespace], int], ns: argparse.Namespace) -> int:
    """Run the command in a worker thread so the main thread can act on a signal at once.

    The main thread waits on an Event of its own, not Thread.join: a KeyboardInterrupt that
    lands inside join() can leave the thread marked as stopped while it still runs (CPython
    3.11), and the interpreter would then exit without waiting for the worker's cleanup.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["rc"] = handler(ns)
        except BaseException as exc:  # handed to the main thread as it is
            outcome["exc"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="assembler-worker")
    worker.start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancel.cancel_all()
        # The worker's blocked call fails now; its finally blocks remove partial files.
        done.wait(UNWIND_SECONDS)
        raise
    if "exc" in outcome:
        raise outcome["exc"]
    return int(outcome["rc"])


# The commands that show the live view on a terminal (a boot test prints its own phases).
LIVE_VIEW = ("build", "base", "fetch")


def _terminal(debug: bool) -> bool:
    """Whether to draw the live view: stderr is a terminal that can draw, and not --debug
    (whose every-command log is meant to be read as it scrolls)."""
    return sys.stderr.isatty() and os.environ.get("TERM", "dumb") != "dumb" and not debug


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Build is the default command: `assembler --format raw` means `assembler build --format raw`.
    if not args or args[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args.insert(0, "build")
    debug = "-v" in args or "--debug" in args
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s" if debug else "%(message)s",
        stream=sys.stderr,
    )
    # A killed build must unwind like an interrupted one: finally blocks remove partial files.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        ns = _parser().parse_args(expand_matrix(args))
        handler = {
            "build": cmd_build,
            "base": cmd_base,
            "fetch": cmd_fetch,
            "boot-test": cmd_boot_test,
            "cache": cmd_cache,
            "publish": cmd_publish,
            "matrix": cmd_matrix,
        }[ns.command]
        if ns.command in LIVE_VIEW and _terminal(debug):
            progress.use_terminal()
        try:
            return _run_in_worker(handler, ns)
        finally:
            progress.stop()  # before the error line, so that it is the last one
    except AssemblerError as exc:
        if debug:
            log.exception("failed")
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # what no step foresaw: still one line
        if debug:
            log.exception("failed")
        if exc.errno == errno.ENOSPC:
            full = NoSpaceError(exc.filename or "the output or cache", "writing")
            print(f"error: {full}", file=sys.stderr)
            return full.exit_code
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        leftovers.release()
