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

A user who rebuilds an image every hour must not fill the home quota with old
copies.  Beside each copy ``.<key>.source`` names the image it came from, and
every container holds a shared ``flock`` on ``.<key>.lock`` for as long as it
runs (the descriptor survives ``exec``).  A new extraction removes the copies
whose image has since been replaced or deleted and that no container is using;
``hpcstack cache prune`` removes every unused copy.
"""

from __future__ import annotations

import fcntl
import functools
import os
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.files import tree_size, write_atomic
from hpcstack.runtime.base import Mountpoint
from hpcstack.runtime.sif import FsType, is_sif, read_sif

# hashlib, tempfile, shutil, subprocess and logging are imported where extraction and
# pruning need them: running an image already extracted (every `hpcstack exec` and
# module wrapper call but the first) should not pay for them.

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
        import hashlib

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
        import tempfile

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


@dataclass(frozen=True)
class Copy:
    """One extracted image in a user's cache."""

    key: str
    path: Path
    image: str
    last_used: float

    @functools.cached_property
    def size(self) -> int:
        return tree_size(self.path)


def prepare_copy(squash: Squash, root: Path) -> Path:
    """The copy of ``squash`` under ``root``, extracted if needed and held while we run.

    When it had to be extracted, the copies of images since replaced or deleted
    go (those no container is using).
    """
    dest = root / squash.key
    fresh = not dest.is_dir()
    extract(squash, dest)
    _hold(dest)
    _note_source(dest, squash.path)
    if fresh:
        for copy in copies(root):
            if copy.key != squash.key and not _current(copy):
                remove_unused(copy)
    return dest


def copies(root: Path) -> list[Copy]:
    """The copies under ``root`` that know their image (every copy this version made)."""
    found = []
    for source in sorted(root.glob(".*.source")):
        key = source.name[1:-len(".source")]
        if (root / key).is_dir():
            found.append(Copy(key, root / key, source.read_text().strip(),
                              source.stat().st_mtime))
    return found


def remove_unused(copy: Copy) -> bool:
    """Delete ``copy`` unless a container holds it; whether it was deleted."""
    fd = os.open(copy.path.parent / f".{copy.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _source_file(copy.path).unlink(missing_ok=True)
        remove_tree(copy.path)
        (copy.path.parent / f".{copy.key}.lock").unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def prune_copies(root: Path, older_than_days: float | None = None) -> list[Copy]:
    """Remove every unused copy, or those unused for ``older_than_days``; return them."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed = []
    for copy in copies(root):
        if cutoff is None or copy.last_used < cutoff:
            _ = copy.size  # measured while it is still there
            if remove_unused(copy):
                removed.append(copy)
    return removed


def _source_file(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.source"


def _note_source(dest: Path, image: Path) -> None:
    """Record which image ``dest`` came from; its mtime says when it was last used."""
    source, text = _source_file(dest), f"{image.absolute()}\n"
    try:
        if source.read_text() == text:
            os.utime(source)
            return
    except OSError:
        pass
    write_atomic(source, text)


def _hold(dest: Path) -> None:
    """A shared lock on the copy, inherited by the container this process becomes."""
    fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.set_inheritable(fd, True)  # never closed: it lives as long as the container


def _current(copy: Copy) -> bool:
    """Whether ``copy`` is still what its image holds."""
    try:
        return locate(Path(copy.image)).key == copy.key
    except UserError:  # deleted, unreadable or no longer an image
        return False


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
        import shutil

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
        import subprocess

        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError("unsquashfs: not found (install squashfs-tools)") from None
    detail = _last_line(proc.stderr or proc.stdout)
    if proc.returncode == 2:
        import logging

        logging.getLogger("hpcstack.runtime").warning(
            "%s: unsquashfs reported non-fatal errors: %s", squash.path, detail)
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
