"""Immutable model of an Apptainer definition file.

Line numbers are kept for messages such as ``hello.def:12: %post failed`` but are
excluded from equality, so a parsed file equals the model it was rendered from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hpcstack.errors import UserError

SCRIPT_SECTIONS = ("setup", "post", "environment", "runscript", "startscript", "test", "help")


class DefFileError(UserError):
    """A problem in a definition file, located by file name and 1-based line (0: none)."""

    def __init__(self, filename: str, line: int, message: str) -> None:
        # One line always: the CLI prints it as ``FILE:LINE: message``.
        message = " ".join(message.splitlines())
        super().__init__(filename, line, message)
        self.filename = filename
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.message}"

    def __repr__(self) -> str:
        return f"DefFileError({self.filename!r}, {self.line}, {self.message!r})"


def show(text: str, limit: int = 40) -> str:
    """User text for a one-line message: plain words as they are, anything odd quoted."""
    if text and len(text) <= limit and text.isprintable() and " " not in text:
        return text
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class Script:
    """One script section (``%post``, ``%runscript``, ...); duplicates are already joined."""

    body: str
    args: str = ""
    line: int = field(default=0, compare=False)

    @property
    def params(self) -> list[str]:
        """Arguments as Apptainer reads them: split on blanks, ``#`` starts a comment."""
        return self.args.split("#", 1)[0].split()

    @property
    def interpreter(self) -> str | None:
        """The program after ``-c`` (``%post -c /bin/bash`` gives ``/bin/bash``), else None."""
        params = self.params
        if "-c" in params:
            rest = params[params.index("-c") + 1 :]
            return rest[0] if rest else None
        return None

    def argv(self, script_path: str) -> tuple[str, ...]:
        """Command that runs this section from *script_path* the way Apptainer does.

        Build-time sections run as ``/bin/sh -ex ARGS SCRIPT``; with ``-c SHELL...``
        everything after ``-c`` becomes one command string ending in the script path.
        """
        params = self.params
        if "-c" in params:
            at = params.index("-c")
            command = " ".join([*params[at + 1 :], script_path])
            return ("/bin/sh", "-ex", *params[:at], "-c", command)
        return ("/bin/sh", "-ex", *params, script_path)


@dataclass(frozen=True)
class FileTransfer:
    """One ``SRC [DST]`` line of ``%files``; ``dst == src`` when only one path was given."""

    src: str
    dst: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class FilesSection:
    """A ``%files`` section; *stage* is NAME for ``%files from NAME``, else None (the host)."""

    stage: str | None
    transfers: tuple[FileTransfer, ...] = ()
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transfers", tuple(self.transfers))


@dataclass(frozen=True)
class Stage:
    """One build stage: header keys, script sections, files and labels."""

    header: tuple[tuple[str, str], ...]
    setup: Script | None = None
    post: Script | None = None
    test: Script | None = None
    environment: Script | None = None
    runscript: Script | None = None
    startscript: Script | None = None
    help: Script | None = None
    files: tuple[FilesSection, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    line: int = field(default=0, compare=False)
    # Line of each header entry, parallel to ``header``.
    header_lines: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the model hashable and comparable.
        _set = object.__setattr__
        _set(self, "header", tuple((str(k), str(v)) for k, v in self.header))
        _set(self, "labels", tuple((str(k), str(v)) for k, v in self.labels))
        _set(self, "files", tuple(self.files))
        _set(self, "header_lines", tuple(self.header_lines))

    def get(self, key: str) -> str | None:
        """Value of header *key*, matched case-insensitively; None when absent."""
        wanted = key.lower()
        for name, value in self.header:
            if name.lower() == wanted:
                return value
        return None

    def line_of(self, key: str) -> int:
        """Line of header *key*, falling back to the stage's own line."""
        wanted = key.lower()
        for (name, _), line in zip(self.header, self.header_lines, strict=False):
            if name.lower() == wanted:
                return line
        return self.line

    @property
    def bootstrap(self) -> str:
        """Bootstrap agent in lower case ("" when missing)."""
        return (self.get("Bootstrap") or "").lower()

    @property
    def name(self) -> str | None:
        """The ``Stage`` key, which ``%files from NAME`` refers to."""
        return self.get("Stage")

    @property
    def from_(self) -> str | None:
        """The ``From`` key: image reference, path or library URI."""
        return self.get("From")

    @property
    def include(self) -> list[str]:
        """Packages of the ``Include`` key, split on blanks and commas."""
        return [item for item in re.split(r"[\s,]+", self.get("Include") or "") if item]

    def script(self, section: str) -> Script | None:
        """Script of *section* ("post", "%post", ...), None when absent."""
        name = section.lstrip("%").lower()
        if name not in SCRIPT_SECTIONS:
            raise KeyError(section)
        return getattr(self, name)

    @property
    def label_map(self) -> dict[str, str]:
        """Labels as a dict (keys are unique)."""
        return dict(self.labels)


@dataclass(frozen=True)
class Definition:
    """A whole definition file: one or more stages; the last one is the image."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def final(self) -> Stage:
        """The last stage, which produces the image."""
        if not self.stages:
            raise ValueError("definition has no stages")
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        """The stage whose ``Stage`` key is *name*."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)
