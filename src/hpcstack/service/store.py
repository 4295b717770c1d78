"""Where a container's files live on the service, and how they are written.

One directory per container record (by id, so user-chosen names never become
paths): ``def/`` (the definition and its uploads), ``image.sif`` (a finished
build), ``sandbox/`` (a writable tree), ``packed.sif`` (a sandbox packed for
download) and ``build.log``.  Files are written under a temporary name and
renamed; every image's sha256 is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from hpcstack.build import fakeroot

CHUNK = 1 << 20


class Paths:
    def __init__(self, root: Path, key: int | str) -> None:
        self.dir = root / str(key)

    @property
    def defdir(self) -> Path:
        return self.dir / "def"

    @property
    def image(self) -> Path:
        return self.dir / "image.sif"

    @property
    def sandbox(self) -> Path:
        return self.dir / "sandbox"

    @property
    def packed(self) -> Path:
        return self.dir / "packed.sif"

    @property
    def log(self) -> Path:
        return self.dir / "build.log"

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(Path(tmp))
        raise


def with_suppress_unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def tree_size(path: Path) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                continue
    return total


def remove(path: Path) -> None:
    """Remove a container's tree; sandboxes hold files of subordinate IDs."""
    fakeroot.remove_tree(path)
