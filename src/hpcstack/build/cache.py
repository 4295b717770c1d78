"""The build cache: bootstrap results kept under a content-addressed key.

A debootstrap of ``bookworm`` with the same ``Include`` and mirror, or an OCI
image pulled by digest, is fetched once and reused by every later build::

    ~/.cache/hpcstack/build/<kind>/<sha256 key>/
        meta.json     what it is (kind, source, created, last used)
        ...           the payload (a root filesystem tree, an OCI layout, ...)
        rootfs/       the payload unpacked by a build's fake root (subordinate-ID
                      owners): later builds overlay it instead of unpacking again

Entries appear atomically (built under a temporary name, then renamed), so an
interrupted fetch leaves nothing that a later build could mistake for a hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcstack.build.fakeroot import remove_tree
from hpcstack.files import tree_size


def cache_root() -> Path:
    """``$HPCSTACK_CACHEDIR``, else ``$XDG_CACHE_HOME/hpcstack``, else ``~/.cache/hpcstack``."""
    if env := os.environ.get("HPCSTACK_CACHEDIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcstack"


def key_of(fields: dict[str, object]) -> str:
    """The content address of a bootstrap: sha256 of its canonical JSON description."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Entry:
    kind: str
    key: str
    path: Path
    source: str
    created: float
    last_used: float
    size: int


class BuildCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_root()) / "build"

    def lookup(self, kind: str, key: str) -> Path | None:
        """The payload directory of a hit (and its last-used time refreshed), else None."""
        path = self.root / kind / key
        meta = path / "meta.json"
        if not meta.is_file():
            return None
        os.utime(meta)
        return path

    def fill(self, kind: str, key: str, source: str,
             produce: Callable[[Path], None]) -> Path:
        """Run ``produce(tmpdir)`` and publish its result as the entry ``kind/key``."""
        final = self.root / kind / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=final.parent))
        try:
            produce(tmp)
            meta = {"kind": kind, "key": key, "source": source, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            try:
                tmp.rename(final)
            except OSError:
                if not (final / "meta.json").is_file():  # lost a race only if the other won
                    raise
        finally:
            remove_tree(tmp)  # what an interrupted fill left, subordinate-ID owners too
        return final

    def entries(self) -> Iterator[Entry]:
        if not self.root.is_dir():
            return
        for meta in sorted(self.root.glob("*/*/meta.json")):
            data = json.loads(meta.read_text())
            yield Entry(data["kind"], data["key"], meta.parent, data.get("source", ""),
                        data.get("created", 0.0), meta.stat().st_mtime, tree_size(meta.parent))

    def prune(self, older_than_days: float | None = None) -> list[Entry]:
        """Remove every entry, or those unused for ``older_than_days``; return them."""
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        removed = []
        for entry in list(self.entries()):
            if cutoff is None or entry.last_used < cutoff:
                (entry.path / "meta.json").unlink()  # no longer a hit, even if removal stops
                remove_tree(entry.path)
                removed.append(entry)
        # Leftovers of interrupted fills (no meta.json) go too, once surely abandoned.
        for tmp in self.root.glob("*/.*"):
            if tmp.stat().st_mtime < time.time() - 86400:
                remove_tree(tmp)
        return removed
