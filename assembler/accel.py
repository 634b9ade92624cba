"""Choose the accelerator: KVM only when a real boot under it proves it works.

On nested hosts /dev/kvm can exist while every guest stalls after SeaBIOS, so opening the
device proves nothing. The probe boots the host's own kernel for a few seconds and looks for
its first console line; the answer is cached per kernel and QEMU binary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from enum import StrEnum
from pathlib import Path

from assembler.paths import cache_dir
from assembler.run import die_with_parent

log = logging.getLogger(__name__)

PROBE_SECONDS = 8.0
QEMU = "qemu-system-x86_64"


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


def _probe_kernel() -> Path | None:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    return kernels[-1] if kernels else None


def _probe_key(kernel: Path) -> str:
    qemu = Path("/usr/bin") / QEMU
    stamp = f"{kernel}:{kernel.stat().st_mtime}:{qemu.stat().st_mtime if qemu.exists() else 0}"
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def kvm_boots(kernel: Path, seconds: float = PROBE_SECONDS) -> bool:
    """Boot `kernel` under KVM and report whether it printed its banner in time."""
    argv = [
        QEMU, "-accel", "kvm", "-m", "256", "-nodefaults", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 quiet=0",
    ]  # fmt: skip
    log.debug("probing KVM: %s", " ".join(argv))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
    except FileNotFoundError:
        return False
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read(4096)
            if chunk:
                seen += chunk
                if b"Linux version" in seen:
                    return True
            else:
                time.sleep(0.1)
        return False
    finally:
        proc.kill()
        proc.wait()


def resolve(requested: Accel) -> Accel:
    """The accelerator to use: an explicit choice wins, AUTO probes (cached)."""
    if requested is not Accel.AUTO:
        return requested
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel.TCG
    kernel = _probe_kernel()
    if kernel is None:
        return Accel.TCG
    cache = cache_dir() / "accel-probe.json"
    key = _probe_key(kernel)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Accel(cached["accel"])
    except (OSError, ValueError, KeyError):
        pass
    answer = Accel.KVM if kvm_boots(kernel) else Accel.TCG
    log.info("accelerator probe: %s", answer)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "accel": str(answer)}))
    tmp.replace(cache)
    return answer
