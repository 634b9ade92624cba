"""Finished outputs, kept by what made them: the top layer (its key and generation), the format
and the compression. An unchanged rebuild is then a copy, not a `qemu-img convert` of the
whole chain.

Under the layer cache, outputs/: <key>.img and <key>.json (written last: sha256, size, the
layer it came from). The .img is a hard link to the first output made (no copy, no space):
an edit to that file in place is caught by the sha256 check on the next use, which drops the
entry and converts again. A reuse copies, so the new output shares nothing with the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from assembler import diskspace, leftovers

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK = 4 << 20


@dataclass(frozen=True)
class Stored:
    sha256: str
    size: int


def output_key(layer_ident: str, image_format: str, compression: str) -> str:
    doc = {"format": FORMAT, "layer": layer_ident, "image": image_format, "c": compression}
    text = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class OutputCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.img", self.root / f"{key}.json"

    def copy_to(self, key: str, output: Path) -> Stored | None:
        """The cached output for key copied to `output` (atomically), checked as it is read;
        None when there is none or it is damaged (then it is dropped)."""
        image, meta = self._paths(key)
        try:
            doc = json.loads(meta.read_text())
            stored = Stored(doc["sha256"], int(doc["size"]))
            src = image.open("rb")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        tmp = leftovers.partial(output)
        try:
            digest = hashlib.sha256()
            with src, tmp.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    if chunk.count(0) == len(chunk):  # a hole stays a hole (raw is mostly one)
                        dst.seek(len(chunk), os.SEEK_CUR)
                    else:
                        dst.write(chunk)
                dst.truncate()
            if digest.hexdigest() != stored.sha256 or tmp.stat().st_size != stored.size:
                log.warning("cached output %s is damaged: dropped, converting again", key[:12])
                self.drop(key)
                return None
            os.replace(tmp, output)
        except OSError as exc:
            diskspace.check((tmp,), "copying the cached image to the output", exc)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        log.info("output from the cache (%s): no convert", key[:12])
        return stored

    def store(
        self, key: str, output: Path, sha256: str, layer_ident: str, link: bool = True
    ) -> None:
        """Keep `output` for key: a hard link (a copy across filesystems, or when the caller
        goes on writing to `output`: link=False)."""
        image, meta = self._paths(key)
        tmp = leftovers.partial(image)
        tmp.unlink(missing_ok=True)
        try:
            if link:
                try:
                    os.link(output, tmp)
                except OSError:
                    link = False
            if not link:
                shutil.copyfile(output, tmp)
            os.replace(tmp, image)
            doc = {"sha256": sha256, "size": image.stat().st_size, "layer": layer_ident}
            meta_tmp = leftovers.partial(meta)
            meta_tmp.write_text(json.dumps(doc))
            os.replace(meta_tmp, meta)
        except OSError as exc:  # a cache that cannot take it costs the next build a convert
            log.warning("output not cached: %s", exc)
        finally:
            tmp.unlink(missing_ok=True)

    def drop(self, key: str) -> None:
        for path in self._paths(key):
            with contextlib.suppress(OSError):
                path.unlink()

    def prune(self, live_layers: set[str]) -> list[str]:
        """Outputs whose layer is gone from the layer cache, and leftovers."""
        removed = []
        for meta in sorted(self.root.glob("*.json")):
            try:
                layer = json.loads(meta.read_text())["layer"]
            except (OSError, ValueError, KeyError):
                layer = None
            if layer not in live_layers:
                self.drop(meta.stem)
                removed.append(f"output {meta.stem[:12]}")
        for image in self.root.glob("*.img"):
            if not image.with_suffix(".json").exists():
                image.unlink(missing_ok=True)
        return removed
