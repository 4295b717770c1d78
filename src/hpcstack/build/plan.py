"""The build plan: what the unprivileged pipeline does, decided before it starts.

The outer process (as the user) resolves everything that needs the host —
bootstrap sources from the cache, host paths for ``%files`` — and writes a
:class:`Plan`; the inner process (fake root, in the build namespace) only
executes it.  Keeping the decision apart from the execution keeps the inner
side small and lets errors the user can fix surface before any work is done.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from hpcstack.deffile import Definition
from hpcstack.deffile.model import DefFileError
from hpcstack.errors import UserError

SourceKind = Literal["oci", "sif", "dir", "empty"]
Compression = Literal["zstd", "gzip", "xz", "lz4", "lzo"]


class Source(BaseModel):
    """Where a stage's root filesystem comes from."""

    kind: SourceKind
    path: str = ""
    offset: int = 0  # of the SquashFS partition inside a SIF
    ref: str = ""  # tag inside an OCI layout
    env: list[tuple[str, str | None]] = []  # an OCI image's ENV, for 10-docker2singularity.sh
    runscript: str = ""  # an OCI image's ENTRYPOINT + CMD, when the stage has no %runscript
    tree: str = ""  # cache directory holding (or to hold) the unpacked root, an overlay's lower


class HostCopy(BaseModel):
    """One ``%files`` line, its host sources already expanded (globs) and checked."""

    sources: list[str]
    dst: str
    line: int


class PlanError(BaseModel):
    """What stopped a build, as the inside reports it: a message, located when it can be."""

    message: str
    file: str | None = None
    line: int | None = None

    @classmethod
    def of(cls, err: UserError) -> PlanError:
        if isinstance(err, DefFileError):
            return cls(message=err.message, file=err.filename, line=err.line)
        return cls(message=str(err))

    def exception(self) -> UserError:
        if self.file is not None and self.line is not None:
            return DefFileError(self.file, self.line, self.message)
        return UserError(self.message)


class Plan(BaseModel):
    deffile: str  # the file's name as the user gave it, for messages
    definition: Definition  # the model, parsed once before the build started
    text: str  # its full text, stored in the image as it is
    workdir: str
    sources: list[Source]  # one per stage
    host_files: list[list[HostCopy]]  # one list per stage
    run_test: bool = True
    force: bool = False  # --force: a base image's runscript.help is replaced, as in Apptainer
    sandbox: bool = False
    compression: Compression = "zstd"
    arch: str = "amd64"
    build_date: str = ""

    def stage_dir(self, index: int) -> str:
        return f"{self.workdir}/stage-{index}"

    def rootfs(self, index: int) -> str:
        return f"{self.stage_dir(index)}/rootfs"

    @property
    def squashfs(self) -> str:
        return f"{self.workdir}/image.sqfs"

    @property
    def metadata_file(self) -> str:  # the final image's inspect-metadata JSON, for the SIF
        return f"{self.workdir}/inspect-metadata.json"

    @property
    def error_file(self) -> str:
        return f"{self.workdir}/error.txt"
