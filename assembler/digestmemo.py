"""sha256 of large local files, remembered by what the kernel says of them: an unchanged rebuild
should not read a 500 MB base again to name it.

Keyed by the file's device, inode, size, mtime and ctime (ns). ctime moves on any write or
metadata change and no program can set it back, so a file changed in place, even with its
mtime restored, is hashed again. One small JSON file under the cache; a damaged or foreign one
is ignored and rewritten.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from assembler.manifest import sha256_file
from assembler.paths import cache_dir

MAX_ENTRIES = 64


def _memo_path() -> Path:
    return cache_dir() / "digests.json"


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{_stamp(st)}"
    memo: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(_memo_path().read_text())
        if isinstance(loaded, dict):
            memo = {k: v for k, v in loaded.items() if isinstance(v, str)}
    if key in memo:
        return memo[key]
    value = sha256_file(path)
    if _stamp(path.stat()) != _stamp(st):
        return value  # changed while being read: worth nothing for next time
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{path.resolve()}|")}
    memo[key] = value
    keep = dict(list(memo.items())[-MAX_ENTRIES:])
    tmp = _memo_path().with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(keep))
        os.replace(tmp, _memo_path())
    return value
