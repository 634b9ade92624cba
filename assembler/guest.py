"""Open a libguestfs appliance on a disk and run commands in the guest filesystem."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from assembler import cancel, leftovers
from assembler.accel import Accel
from assembler.errors import BuildError, UsageError

log = logging.getLogger(__name__)

# Measured under TCG on 2 cores: 2 vCPUs and 2 GiB took apt-get update from 21 s to 16 s and
# the package install from 73 s to 59 s (dpkg-deb decompresses in a second process, apt
# decompresses lists in parallel); launch time did not change.
APPLIANCE_MEMSIZE_MB = 2048
APPLIANCE_MAX_VCPUS = 2


def _guestfs() -> Any:
    try:
        import guestfs  # Debian's python3-guestfs; not on PyPI
    except ImportError as exc:
        raise UsageError(
            "the libguestfs Python bindings are missing (python3-guestfs); run `make setup`"
        ) from exc
    return guestfs


@contextmanager
def appliance(
    disks: list[tuple[Path, str]],
    *,
    accel: Accel,
    network: bool = False,
    readonly: bool = False,
) -> Iterator[Any]:
    """A launched guestfs handle with `disks` ([(path, format)]) attached, closed on exit."""
    guestfs = _guestfs()
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    if accel is Accel.TCG:
        g.set_backend_settings(["force_tcg"])
    g.set_memsize(APPLIANCE_MEMSIZE_MB)
    g.set_smp(max(1, min(APPLIANCE_MAX_VCPUS, os.cpu_count() or 1)))
    g.set_network(network)
    # Its overlays in our run directory: a build killed outright leaves them where the next
    # build sweeps (libguestfs's recovery process stops the appliance itself). Its sockets stay
    # in $XDG_RUNTIME_DIR or /tmp: these bindings cannot move them.
    g.set_tmpdir(str(leftovers.run_dir()))
    for index, (path, fmt) in enumerate(disks):
        g.add_drive_opts(
            str(path),
            format=fmt,
            readonly=readonly,
            # Lets fstrim punch holes in the qcow2 so the converted image stays compact.
            discard="disable" if readonly else "besteffort",
            cachemode="unsafe",
        )
        # QEMU pauses the appliance when a write to the disk's file fails for want of room
        # (werror=enospc), and the build would wait forever: the error goes to the appliance
        # instead, so the step fails and the host names the full filesystem (diskspace.py).
        # libguestfs's direct backend names its drives hd0, hd1, ...
        g.config("-set", f"drive.hd{index}.werror=report")
    try:
        log.info("launching the libguestfs appliance (%s)", accel)
        cancel.check()
        g.launch()
        with cancel.child(g.get_pid()):
            yield g
            cancel.check()
            if not readonly:
                g.shutdown()
    finally:
        g.close()


def sh(g: Any, step: str, script: str) -> str:
    """Run a shell script inside the guest's root (chroot); BuildError with stderr on failure."""
    log.debug("guest sh [%s]: %s", step, script)
    try:
        return str(g.sh(script))
    except RuntimeError as exc:
        cancel.check()  # the appliance was stopped under it: an interruption, not a fault
        raise BuildError(step, _last_lines(str(exc))) from exc


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "no output"


def write(g: Any, path: str, content: str | bytes, mode: int = 0o644, owner: str = "root") -> None:
    """Write a file in the guest with its mode and owner set, parent directories made."""
    parent = path.rsplit("/", 1)[0] or "/"
    g.mkdir_p(parent)
    g.write(path, content.encode() if isinstance(content, str) else content)
    g.chmod(mode, path)
    uid, gid = ids(g, owner)
    g.chown(uid, gid, path)


def ids(g: Any, user: str, group: str | None = None) -> tuple[int, int]:
    """The guest's numeric uid of `user` and gid of `group` (default: the user's own group)."""
    if user == "root" and group in (None, "root"):
        return 0, 0  # every shell call costs ~0.3 s under emulation
    uid = int(sh(g, "lookup-user", f"id -u {user}").strip())
    gid_cmd = f"getent group {group} | cut -d: -f3" if group else f"id -g {user}"
    gid_text = sh(g, "lookup-user", gid_cmd).strip()
    if not gid_text:
        raise BuildError("lookup-user", f"no group {group!r} in the guest")
    return uid, int(gid_text)
