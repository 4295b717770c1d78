"""A per-user cache of images extracted to directories, for runtimes that need one.

Charliecloud runs a directory (or a SquashFS file through FUSE, which needs a
world-usable ``/dev/fuse`` that many nodes lack).  So a SIF's primary SquashFS
partition is unpacked once with ``unsquashfs -o OFFSET`` into
``${XDG_CACHE_HOME:-~/.cache}/hpcstack/images/<sif-id>-<mtime_ns>/``.  The name
changes whenever the image file does, so a rebuilt image is never run stale.

Extraction goes to a temporary directory beside the target and is renamed into
place, under an exclusive ``flock``: concurrent first runs (an ``srun`` of many
ranks) extract once, and a crash never leaves a half-filled directory that later
runs would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.runtime.base import Mountpoint
from hpcstack.runtime.sif import FsType, is_sif, read_sif

log = logging.getLogger("hpcstack.runtime")

SQUASHFS_MAGIC = b"hsqs"


@dataclass(frozen=True)
class Squash:
    """Where a SquashFS file system lies: in ``path`` at byte ``offset``; ``key`` names its copy."""

    path: Path
    offset: int
    key: str


def cache_dir(environ: Mapping[str, str]) -> Path:
    """The directory holding extracted images for this user (XDG base directory rules)."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg.startswith("/"):
        base = Path(xdg)
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        base = Path(home) / ".cache"
    return base / "hpcstack" / "images"


def locate(image: Path) -> Squash:
    """The SquashFS inside a SIF (its primary partition) or a bare SquashFS file."""
    st = _stat(image)
    if is_sif(image):
        sif = read_sif(image)
        part = sif.primary_partition()
        assert part.partition is not None
        if part.partition.fs != FsType.SQUASHFS:
            fs = getattr(part.partition.fs, "name", part.partition.fs)
            raise UserError(f"{image}: primary partition is {fs}, only SquashFS can be run")
        return Squash(image, part.offset, f"{sif.id}-{st.st_mtime_ns}")
    if _head(image, 4) == SQUASHFS_MAGIC:
        digest = hashlib.sha256(str(image.absolute()).encode()).hexdigest()[:16]
        return Squash(image, 0, f"sqfs-{digest}-{st.st_mtime_ns}")
    raise UserError(f"{image}: not a SIF image (bad magic)")


def extract(squash: Squash, dest: Path) -> Path:
    """Unpack ``squash`` to ``dest`` unless already there; safe against concurrent callers."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / f".{dest.name}.lock"):
        if dest.is_dir():
            return dest
        for stale in dest.parent.glob(f".{dest.name}.*"):
            if stale.is_dir():  # left by a run killed mid-extraction; we hold the lock now
                remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            _unsquash(squash, tmp / "root")
            try:
                os.rename(tmp / "root", dest)
            except OSError:
                if not dest.is_dir():  # lost a race no lock could prevent (e.g. NFS): fine
                    raise
        finally:
            remove_tree(tmp)
    return dest


def make_mountpoints(root: Path, mountpoints: list[Mountpoint]) -> None:
    """Create empty directories (or files) at guest paths in ``root``, a copy we own."""
    for point in mountpoints:
        parts = Path(point.path).relative_to("/").parts
        path = root
        for i, part in enumerate(parts):
            parent, path = path, path / part
            if path.is_symlink() or (path.exists() and not path.is_dir() and i < len(parts) - 1):
                raise UserError(f"{root}: cannot make mount point {point.path} (not a directory)")
            if not path.exists():
                _make_in(parent, path, point.directory or i < len(parts) - 1)


def remove_tree(path: Path) -> None:
    """Delete a directory tree even where an image made directories read-only."""

    def retry(func, failed, _exc):  # type: ignore[no-untyped-def]
        os.chmod(os.path.dirname(failed), stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
        func(failed)

    if path.exists():
        shutil.rmtree(path, onerror=retry)


def _make_in(parent: Path, path: Path, directory: bool) -> None:
    """Make ``path`` even in a read-only directory of the copy (``/proc`` is 0555)."""
    mode = parent.stat().st_mode
    writable = mode & stat.S_IWUSR
    if not writable:
        os.chmod(parent, mode | stat.S_IWUSR)
    try:
        if directory:
            path.mkdir(mode=0o755, exist_ok=True)
        else:
            path.touch(mode=0o644, exist_ok=True)
    finally:
        if not writable:
            os.chmod(parent, mode)


def _unsquash(squash: Squash, dest: Path) -> None:
    argv = [
        "unsquashfs",
        "-n",
        "-q",
        "-no-xattrs",
        "-o",
        str(squash.offset),
        "-d",
        str(dest),
        str(squash.path),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError("unsquashfs: not found (install squashfs-tools)") from None
    detail = _last_line(proc.stderr or proc.stdout)
    if proc.returncode == 2:
        log.warning("%s: unsquashfs reported non-fatal errors: %s", squash.path, detail)
    elif proc.returncode != 0:
        raise UserError(f"{squash.path}: cannot extract its SquashFS partition ({detail})")


@contextmanager
def _locked(lockfile: Path) -> Iterator[None]:
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stat(image: Path) -> os.stat_result:
    try:
        return image.stat()
    except OSError as err:
        raise UserError(f"{image}: cannot read ({err.strerror})") from None


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
