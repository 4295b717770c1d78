"""Small file helpers every part shares: checksums, atomic writes, tree sizes, sizes shown.

Nothing user-visible is ever half-written: :func:`write_atomic` writes under a
temporary name in the same directory and renames, so readers see the old file
or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    import hashlib  # here, not at the top: container launches import this module

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file, then rename."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def tree_size(root: Path) -> int:
    """Bytes under ``root``; parts only subordinate IDs can read are skipped."""
    total = 0
    for path, _, files in os.walk(root, onerror=lambda _: None):
        for name in files:
            try:
                total += os.lstat(os.path.join(path, name)).st_size
            except OSError:
                continue
    return total


def human_size(size: float) -> str:
    """``1.5 MiB``: bytes as every listing and message shows them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"
