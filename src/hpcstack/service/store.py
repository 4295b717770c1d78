"""Where a container's files live on the service, and how they are written.

One directory per container record (by id, so user-chosen names never become
paths): ``def/`` (the definition and its uploads), ``image.sif`` (a finished
build), ``sandbox/`` (a writable tree), ``packed.sif`` (a sandbox packed for
download), ``build.log``, and the build job's ``request.json`` and
``result.json``.  Files are written under a temporary name and renamed; every
image's sha256 is recorded.
"""

from __future__ import annotations

from pathlib import Path

from hpcstack.build import fakeroot


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
        """The running build's scratch: the only place its jail may write."""
        return self.dir / "tmp"

    @property
    def jail(self) -> Path:
        """An empty directory the build's jail mounts its root on (in its namespace)."""
        return self.dir / "jail"

    @property
    def request(self) -> Path:
        """The typed build request (:class:`~hpcstack.build.job.BuildRequest`)."""
        return self.dir / "request.json"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"


def remove(path: Path) -> None:
    """Remove a container's tree; sandboxes hold files of subordinate IDs."""
    fakeroot.remove_tree(path)
