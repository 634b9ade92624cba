"""The agent's venv, laid out on the host for the guest's Python, and packed for `tar_in`.

Nothing here runs the guest's Python (under TCG a venv plus `pip install` of the agent takes
minutes; natively this takes seconds). A venv is a plain tree: `pyvenv.cfg`, `bin/python3`
pointing at the guest's interpreter, the wheels unpacked into `lib/python3.X/site-packages`, and
console scripts whose shebang is the venv's python. The PyPA `installer` library writes the
wheels with the guest's paths while the files land in a staging directory (its `destdir`), which
stands for the guest's `/`.
"""

from __future__ import annotations

import compileall
import logging
import os
import py_compile
import shutil
import stat
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from assembler.agent.wheelhouse import Wheel, Wheelhouse
from assembler.errors import BuildError, UsageError

log = logging.getLogger(__name__)

STEP = "agent-venv"
# trovestack's paths: the venv, and (dev mode) the wheelhouse a missing requirement is
# pip-installed from offline.
VENV_PREFIX = PurePosixPath("/opt/guest-agent-venv")
WHEELS_PREFIX = PurePosixPath("/opt/guest-agent-wheels")
GUEST_PYTHON_HOME = PurePosixPath("/usr/bin")
# Written into each dist-info/INSTALLER, as pip writes "pip": who installed the distribution.
INSTALLER_NAME = b"trove-image-assembler\n"
# Pins of every wheel in the baked wheelhouse, for `pip install -c` in the guest.
WHEELS_CONSTRAINTS = "constraints.txt"

_ACTIVATE = """\
# Source this from bash or sh: . {prefix}/bin/activate
# Written by trove-image-assembler; `deactivate` undoes it.
deactivate () {{
    if [ -n "${{_OLD_VIRTUAL_PATH:-}}" ]; then PATH="$_OLD_VIRTUAL_PATH"; export PATH; fi
    unset _OLD_VIRTUAL_PATH VIRTUAL_ENV VIRTUAL_ENV_PROMPT
    hash -r 2>/dev/null
    [ "${{1:-}}" = "nondestructive" ] || unset -f deactivate
}}
deactivate nondestructive
VIRTUAL_ENV="{prefix}"
VIRTUAL_ENV_PROMPT="{name}"
_OLD_VIRTUAL_PATH="$PATH"
PATH="$VIRTUAL_ENV/bin:$PATH"
export VIRTUAL_ENV VIRTUAL_ENV_PROMPT PATH
hash -r 2>/dev/null
"""


def host_path(staging: Path, guest_path: PurePosixPath) -> Path:
    """Where a guest path lives under the staging directory (which stands for the guest's /)."""
    if not guest_path.is_absolute():
        raise UsageError(f"guest path {guest_path} is not absolute")
    return staging / guest_path.relative_to("/")


def site_packages(prefix: PurePosixPath, python: str) -> PurePosixPath:
    return prefix / "lib" / f"python{python}" / "site-packages"


def host_can_compile(python: str) -> bool:
    """Whether this host's Python writes .pyc files the guest's `python` reads (same X.Y)."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}" == python


def lay_out_venv(
    wheelhouse: Wheelhouse,
    staging: Path,
    prefix: PurePosixPath = VENV_PREFIX,
    *,
    include_agent: bool = True,
    compile_bytecode: bool = False,
) -> Path:
    """Write the venv for the wheelhouse's Python at `staging/prefix`; return that host path.

    include_agent=False leaves trove itself out (dev mode runs it from its source). The venv
    must not exist yet. compile_bytecode writes .pyc files, which is only possible when this
    host's Python has the guest's major.minor (the format is version-specific).
    """
    python = wheelhouse.python
    if compile_bytecode:
        _require_host_python(python)  # before anything is written
    root = host_path(staging, prefix)
    if root.exists():
        raise UsageError(f"{root} already exists; the venv is laid out into an empty place")
    started = time.monotonic()
    _skeleton(root, prefix, python)
    wheels = wheelhouse.wheels if include_agent else wheelhouse.requirements()
    for wheel in wheels:
        _install(wheel, staging, prefix, python)
    if compile_bytecode:
        compile_venv(staging, prefix, python)
    log.info(
        "laid out the agent venv for Python %s: %d distributions in %.1f s",
        python,
        len(wheels),
        time.monotonic() - started,
    )
    return root


def _skeleton(root: Path, prefix: PurePosixPath, python: str) -> None:
    """What `python3 -m venv --without-pip` makes, written without the guest's Python."""
    interpreter = GUEST_PYTHON_HOME / f"python{python}"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    (root / "include").mkdir()
    (root / "lib" / f"python{python}" / "site-packages").mkdir(parents=True)
    # Python finds its prefix from pyvenv.cfg beside or above the (unresolved) executable;
    # `home` is where the base interpreter lives.
    (root / "pyvenv.cfg").write_text(
        f"home = {GUEST_PYTHON_HOME}\n"
        "include-system-site-packages = false\n"
        f"version = {python}\n"
        f"executable = {interpreter}\n"
        f"command = {interpreter} -m venv {prefix}\n"
    )
    # As venv does on 64-bit Linux: lib64 -> lib, python3 -> the base, the others -> python3.
    (root / "lib64").symlink_to("lib")
    (bin_dir / "python3").symlink_to(interpreter)
    (bin_dir / "python").symlink_to("python3")
    (bin_dir / f"python{python}").symlink_to("python3")
    (bin_dir / "activate").write_text(_ACTIVATE.format(prefix=prefix, name=prefix.name))


def _require_host_python(python: str) -> None:
    if not host_can_compile(python):
        raise UsageError(
            f"cannot byte-compile for the guest's Python {python} with this host's Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}"
        )


def compile_venv(staging: Path, prefix: PurePosixPath, python: str) -> None:
    """Byte-compile site-packages as the guest will import it. Checked-hash .pyc files hold
    the source's hash, not its mtime (the time this build unpacked it): two builds of the same
    wheels write the same bytes, and the guest still rejects a .pyc whose source changed.
    Only a host Python of the guest's major.minor can (the format is version-specific)."""
    _require_host_python(python)
    guest_lib = site_packages(prefix, python)
    # A file that does not compile (Python 2 examples some distributions ship) is left as
    # source, as pip leaves it: its return value is not an error.
    compileall.compile_dir(
        host_path(staging, guest_lib),
        ddir=str(guest_lib),
        quiet=2,
        # One process: this runs in a thread beside a live appliance, no fork wanted here.
        workers=1,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )


def _install(wheel: Wheel, staging: Path, prefix: PurePosixPath, python: str) -> None:
    lib = str(site_packages(prefix, python))
    destination = SchemeDictionaryDestination(
        scheme_dict={
            "purelib": lib,
            "platlib": lib,
            "headers": str(prefix / "include" / "site" / f"python{python}" / wheel.name),
            "scripts": str(prefix / "bin"),
            "data": str(prefix),
        },
        # The shebang of console scripts: the venv's python as the guest will see it.
        interpreter=str(prefix / "bin" / "python3"),
        script_kind="posix",
        bytecode_optimization_levels=(),  # compiled afterwards, reproducibly: _compile
        destdir=str(staging),
    )
    try:
        with WheelFile.open(wheel.path) as source:
            install(source, destination, {"INSTALLER": INSTALLER_NAME})
    except (FileExistsError, ValueError) as exc:  # two wheels with one file; a bad wheel
        raise BuildError(STEP, f"cannot install {wheel.path.name}: {exc}") from exc


def stage_wheelhouse(
    wheelhouse: Wheelhouse,
    staging: Path,
    prefix: PurePosixPath = WHEELS_PREFIX,
    *,
    include_agent: bool = False,
) -> Path:
    """Copy the wheels to `staging/prefix` (dev mode's offline source for `pip install
    --no-index --find-links`), with a constraints file pinning each; return that host path."""
    root = host_path(staging, prefix)
    root.mkdir(parents=True, exist_ok=False)
    wheels = wheelhouse.wheels if include_agent else wheelhouse.requirements()
    for wheel in wheels:
        shutil.copyfile(wheel.path, root / wheel.path.name)
    pins = "".join(f"{w.name}=={w.version}\n" for w in sorted(wheels, key=lambda w: w.name))
    (root / WHEELS_CONSTRAINTS).write_text(pins)
    return root


def tar_tree(
    staging: Path,
    tar_path: Path,
    subtrees: Sequence[PurePosixPath],
    *,
    uid: int,
    gid: int,
) -> Path:
    """Pack `subtrees` (guest paths under `staging`) into an uncompressed tar for `tar_in` at /.

    Every member is owned uid:gid by number, with no user or group names: GNU tar, extracting
    as root in the appliance, would look names up in the appliance's passwd, not the guest's.
    Ancestors of the subtrees (/opt) are left out, so their guest ownership stays as it is.
    Modes are normalised (0755 directories and executables, 0644 other files) whatever the
    host's umask was; mtimes are kept, as .pyc files are checked against their source's.
    """
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for subtree in subtrees:
            top = host_path(staging, subtree)
            if not top.is_dir():
                raise BuildError(STEP, f"{top} is not a directory to pack")
            for path in _walk(top):
                info = _member(tar, path, staging, uid, gid)
                if info.isreg():
                    with path.open("rb") as content:
                        tar.addfile(info, content)
                else:
                    tar.addfile(info)
    return tar_path


def _walk(top: Path) -> Iterable[Path]:
    """top, then everything below it, sorted, so the archive is the same for the same tree."""
    yield top
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        here = Path(dirpath)
        # os.walk lists symlinks to directories among dirnames but does not enter them.
        yield from sorted([here / n for n in dirnames] + [here / n for n in filenames])


def _member(tar: tarfile.TarFile, path: Path, staging: Path, uid: int, gid: int) -> tarfile.TarInfo:
    info = tar.gettarinfo(str(path), arcname=path.relative_to(staging).as_posix())
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    if info.isdir():
        info.mode = 0o755
    elif info.isreg():
        info.mode = 0o755 if info.mode & stat.S_IXUSR else 0o644
    return info
