"""The CLI: trovestack's positional form, and bad input as one line with exit code 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assembler.cli import _parser, build_options
from assembler.config import make_config
from assembler.errors import UsageError


def parse(*args: str):  # type: ignore[no-untyped-def]
    return build_options(_parser().parse_args(["build", *args]))


def test_trovestack_positional_form() -> None:
    opts = parse("ubuntu", "noble", "false", "trove", "/tmp/x.vmdk")
    cfg = make_config(opts, {})
    assert (cfg.release.codename, cfg.dev_mode, cfg.guest_username) == ("noble", False, "trove")
    assert str(cfg.output) == "/tmp/x.vmdk"
    assert str(cfg.image_format) == "vmdk"


def test_positional_and_option_must_agree() -> None:
    with pytest.raises(UsageError, match="release given twice"):
        parse("ubuntu", "jammy", "--release", "noble")
    with pytest.raises(UsageError, match="dev_mode must be true or false"):
        parse("ubuntu", "jammy", "maybe")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assembler", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--guest-os", "centos"], "invalid choice"),
        (["--format", "vdi"], "invalid choice"),
        (["--guest-os", "debian", "--release", "jammy"], "unknown release"),
        (["-o", "/tmp/x.qcow2", "--format", "raw"], "conflicts"),
        (["-o", "/tmp/x.iso"], "cannot tell the format"),
        (["-o", "/tmp/x.qcow2", "--base", "/nonexistent/base.qcow2"], "does not exist"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ")
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_base_that_is_not_a_disk_image(tmp_path: Path) -> None:
    junk = tmp_path / "base.qcow2"
    junk.write_bytes(b"this is a text file, not a disk\n" * 100)
    proc = cli("--base", str(junk), "-o", str(tmp_path / "out.raw"))
    assert proc.returncode == 2
    assert "is not a disk image" in proc.stderr


def test_output_dir_not_writable(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    proc = cli("--base", str(base), "-o", str(blocker / "sub" / "out.raw"))
    assert proc.returncode == 2
    assert "cannot create output directory" in proc.stderr


def test_size_smaller_than_base(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "8G"], check=True)
    proc = cli("--base", str(base), "-o", str(tmp_path / "out.raw"), "--size", "5G")
    assert proc.returncode == 2
    assert "smaller than the base" in proc.stderr
    assert not (tmp_path / "out.raw").exists()


def test_debug_shows_the_traceback() -> None:
    proc = cli("--debug", "--guest-os", "debian", "--release", "jammy")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_malformed_datastore_image_is_one_line() -> None:
    proc = cli("-o", "/tmp/x.qcow2", "--datastore-image", "UPPER/case:1")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "malformed image reference" in proc.stderr


WORKER_SCRIPT = """
import argparse, pathlib, signal, sys, time
from assembler import cancel, cli

marker = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, cli._raise_interrupt)

def handler(ns):
    try:
        print("working", flush=True)
        while not cancel.cancelled():
            time.sleep(0.05)
        return 0
    finally:
        time.sleep(1.0)  # cleanup that takes a while, as removing a partial layer does
        marker.write_text("cleaned up")

try:
    cli._run_in_worker(handler, argparse.Namespace())
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_an_interrupted_command_waits_for_its_cleanup(tmp_path: Path) -> None:
    """SIGTERM stops the command, and the process exits only after the worker's finally blocks
    ran (a KeyboardInterrupt inside Thread.join once let the interpreter exit without them)."""
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, str(marker)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "working"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert marker.read_text() == "cleaned up"
