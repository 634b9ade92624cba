"""Write the finished disk in the asked format with qemu-img, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from assembler import diskspace, leftovers
from assembler.errors import CommandError
from assembler.formats import FORMATS, ImageFormat
from assembler.run import run


def image_info(path: Path) -> dict[str, object]:
    """qemu-img's view of a file (format, virtual size), without following backing files."""
    out = run(["qemu-img", "info", "--output=json", path])
    info = json.loads(out)
    assert isinstance(info, dict)
    return info


def convert(source: Path, fmt: ImageFormat, output: Path, compression: str = "none") -> None:
    """Convert `source` (qcow2, maybe with backing chain) to `output`; never a partial file.

    The temporary file sits next to the output so the final rename is atomic on one filesystem.
    `compression` (zlib or zstd) applies to qcow2: its clusters compress in qemu-img's worker
    threads, so out-of-order writes with several coroutines keep every core busy.
    """
    info = FORMATS[fmt]
    tmp = leftovers.partial(output)
    argv: list[str | Path] = ["qemu-img", "convert", "-q", "-O", info.qemu_driver, "-m", "8"]
    options = list(info.qemu_options)
    if compression != "none":
        if fmt is not ImageFormat.QCOW2:
            raise ValueError(f"compression applies to qcow2, not {fmt}")
        argv.append("-c")
        options.append(f"compression_type={compression}")
    if options:
        argv += ["-o", ",".join(options)]
    if info.out_of_order:
        argv.append("-W")
    argv += [source, tmp]
    try:
        try:
            run(argv)
        except CommandError as exc:
            diskspace.check((tmp,), f"converting to {fmt}", exc)
            raise
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
