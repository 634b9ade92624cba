"""Whether a file holds a private key: the one detector the build and the boot check share.

The build strips what it finds from the agent's venv (assembler/agent/payload.py); the boot
check runs this same module inside the guest (the harness ships it beside the gatherer,
assembler/boottest/guest_facts.py), so both find the same set. Hence: stdlib only, and syntax
Python 3.9 runs.

The rule. A key is a block that holds key material, not text that names the markers:

- PEM: `-----BEGIN <label>PRIVATE KEY-----` (label: none, `RSA `, `EC `, `DSA `, `OPENSSH `,
  `ENCRYPTED `..., and `---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----`) anywhere in a file, not only
  at a line's start, and the first END marker of the same label at most MAX_SPAN bytes after it.
  The text between them is the body.
- PuTTY: `PuTTY-User-Key-File-N:`, then within MAX_SPAN `Private-Lines: N`; the body runs from
  there to `Private-MAC:` (`Private-Hash:` in version 1).
- The body is unquoted: escape sequences for line ends (`\\n`, `\\\\n`, `\\r`, `\\t`, XML's
  `&#10;`) become line ends, other backslashes go; PEM headers (`Proc-Type:`, `DEK-Info:`,
  `Comment:`, to the end of their line) go; then it is split into runs at whitespace, quotes
  (`"` `'` and backquote) and the punctuation of concatenation and comment prefixes
  (`, ; . # *`). A `+` or `//` left by concatenation or comments is base64 alphabet, and so are
  the `b`/`r`/`u` prefixes of string literals: they may stay.
- It is a key when every run is base64 (`A-Z a-z 0-9 + / =`), the runs total at least
  MIN_BODY characters (MIN_PPK_BODY for PuTTY, whose ed25519 private line is 48), one run is at
  least MIN_RUN long (a line of the body: PEM writes 64 a line, prose and identifiers are
  shorter), and the body mixes digits, upper and lower case (random base64 always does).

Compiled native code (ELF objects: executables, shared libraries) is not scanned. Crypto
libraries compile their self-test vectors in: GnuTLS's libgnutls.so.30 (in Debian's base and in
the datastore images built on it) holds ten real keys (RSA, DSA, EC, GOST), the same public
bytes in every install of that library, no secret of this image; and the build compiles no
native code. Bytecode is scanned.

So a key is found whatever the file's language or quoting: a bare PEM file, a triple-quoted
indented string, quoted lines concatenated implicitly or with `+`, one line with `\\n` escapes,
JSON or YAML, comment-prefixed lines, a marshalled constant in a .pyc. Code and docs that name
the markers are not keys: between their markers lies code (`_ ( ) : =`...), a truncated example,
or nothing. Out of reach, by design: compressed content (zip, gzip: a wheel's members) and a
marker itself split across literals.

Files are read in CHUNK windows that overlap by more than MAX_SPAN, so a file of any size is
scanned whole in bounded memory, and a key across a window's edge lies whole in one window.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

# Cheap fixed strings every key above contains verbatim, escaped or not: the boot check's grep
# prefilter uses exactly these, so grep and this module pick the same candidates.
MARKERS = (b"PRIVATE KEY", b"PuTTY-User-Key-File-")
MAX_SPAN = 64 * 1024  # a 16384-bit RSA key, quoted and escaped, is ~30 KiB
MIN_BODY = 64
MIN_PPK_BODY = 40
MIN_RUN = 40
CHUNK = 8 * 1024 * 1024
OVERLAP = MAX_SPAN + 1024
ELF_MAGIC = b"\x7fELF"

_BEGIN = re.compile(rb"-{4,5} ?BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY ?-{4,5}")
_PPK = re.compile(rb"PuTTY-User-Key-File-(\d+):")
_PPK_PRIVATE = re.compile(rb"Private-Lines:[ \t]*\d+")
_PPK_END = re.compile(rb"Private-(?:MAC|Hash):")
_ESCAPED_EOL = re.compile(rb"\\+[nrt]|&#(?:1[03]|x0?[aAdD]);")
_BACKSLASHES = re.compile(rb"\\+")
_HEADER = re.compile(rb"(?:Proc-Type|DEK-Info|Comment):[^\n]*")
_SYNTAX = re.compile(rb"[\s\"'`,;.#*]+")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]+")
_DIGIT = re.compile(rb"[0-9]")
_UPPER = re.compile(rb"[A-Z]")
_LOWER = re.compile(rb"[a-z]")


class Finding(NamedTuple):
    kind: str  # the PEM label ("RSA PRIVATE KEY") or "PuTTY-User-Key-File-3"
    offset: int  # of its first marker in the file


def grep_patterns() -> list[str]:
    """`grep -F` arguments for the candidates: the markers, which quoted and escaped keys hold
    too. The build's strip and the boot check both pick files with these."""
    return [arg for m in MARKERS for arg in ("-e", m.decode())]


def is_key_body(body: bytes, min_body: int = MIN_BODY) -> bool:
    """Whether the text between a key's markers is key material (the rule above)."""
    text = _ESCAPED_EOL.sub(b"\n", body)
    text = _BACKSLASHES.sub(b"", text)
    text = _HEADER.sub(b"", text)
    runs = [r for r in _SYNTAX.split(text) if r]
    if not runs or not all(_BASE64_RUN.fullmatch(r) for r in runs):
        return False
    joined = b"".join(runs)
    return (
        len(joined) >= min_body
        and max(len(r) for r in runs) >= MIN_RUN
        and all(p.search(joined) for p in (_DIGIT, _UPPER, _LOWER))
    )


def keys_in(data: bytes) -> Iterator[Finding]:
    """Every key in `data`, in order of offset."""
    found = []
    for begin in _BEGIN.finditer(data):
        label = begin.group(1)
        close = _end_marker(label).search(data, begin.end(), begin.start() + MAX_SPAN)
        if close and is_key_body(data[begin.end() : close.start()]):
            found.append(Finding((label + b"PRIVATE KEY").decode(), begin.start()))
    for head in _PPK.finditer(data):
        private = _PPK_PRIVATE.search(data, head.end(), head.start() + MAX_SPAN)
        if private is None:
            continue
        close = _PPK_END.search(data, private.end(), head.start() + MAX_SPAN)
        if close and is_key_body(data[private.end() : close.start()], MIN_PPK_BODY):
            found.append(Finding(f"PuTTY-User-Key-File-{head.group(1).decode()}", head.start()))
    return iter(sorted(found, key=lambda f: f.offset))


_END_MARKERS: dict[bytes, re.Pattern[bytes]] = {}


def _end_marker(label: bytes) -> re.Pattern[bytes]:
    if label not in _END_MARKERS:
        _END_MARKERS[label] = re.compile(
            rb"-{4,5} ?END " + re.escape(label) + rb"PRIVATE KEY ?-{4,5}"
        )
    return _END_MARKERS[label]


def scan_stream(stream: BinaryIO) -> Finding | None:
    """The first key in a binary stream of any length, read in overlapping windows; None for
    an ELF object (see above)."""
    base = 0
    window = stream.read(CHUNK + OVERLAP)
    if window.startswith(ELF_MAGIC):
        return None
    while window:
        more = stream.read(CHUNK)
        last = not more
        if any(m in window for m in MARKERS):
            for finding in keys_in(window):
                # A key starting in the overlap is the next window's, which holds it whole.
                if last or finding.offset < CHUNK:
                    return Finding(finding.kind, base + finding.offset)
        if last:
            return None
        window = window[CHUNK:] + more
        base += CHUNK
    return None


def scan_file(path: str) -> Finding | None:
    """The first key in the regular file at `path`; None for anything else or an unreadable file."""
    try:
        # lstat first: opening a FIFO would block, and a symlink's target is scanned as itself.
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return scan_stream(f)
    except OSError:
        return None
