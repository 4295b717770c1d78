"""Parse definition-file text into the model, the way Apptainer reads it.

The grammar follows Apptainer's ``pkg/build/types/parser``: a new stage starts at
every line beginning with ``bootstrap:`` (any case, column 0); inside a stage the
header runs up to the first line whose first word starts with ``%``; each such
line opens a section that runs to the next one.  Scanning is tolerant: every
problem is recorded and scanning goes on, so ``check`` can report them all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from hpcstack.deffile.check import validate
from hpcstack.deffile.model import (
    SCRIPT_SECTIONS,
    DefFileError,
    Definition,
    FilesSection,
    FileTransfer,
    Script,
    Stage,
    show,
)

HEADER_KEYS = {
    key.lower(): key
    for key in (
        "Bootstrap",
        "From",
        "OSVersion",
        "MirrorURL",
        "UpdateURL",
        "Include",
        "IncludeCmd",
        "Stage",
        "Library",
        "Registry",
        "Namespace",
        "Fingerprints",
        "Product",
        "User",
        "Regcode",
        "ProductPGP",
        "RegisterURL",
        "Modules",
        "ConfURL",
        "SetOpt",
    )
}
_OTHER_URL = re.compile(r"otherurl([0-9]+)", re.ASCII)
APP_SECTIONS = frozenset(
    [
        "appinstall",
        "applabels",
        "appfiles",
        "appenv",
        "apptest",
        "apphelp",
        "apprun",
        "appstart",
        "appsetup",
    ]
)
UNSUPPORTED_SECTIONS = {
    "pre": "%pre section is not supported (use %setup)",
    "arguments": "%arguments section (build arguments) is not supported",
}


def canonical_key(key: str) -> str | None:
    """Canonical spelling of a header key ("mirrorurl" -> "MirrorURL"), None if unknown."""
    lowered = key.lower()
    if lowered in HEADER_KEYS:
        return HEADER_KEYS[lowered]
    match = _OTHER_URL.fullmatch(lowered)
    return f"OtherURL{match.group(1)}" if match else None


def is_stage_start(line: str) -> bool:
    """Apptainer splits stages at ``^bootstrap:``, case-insensitive, even inside sections."""
    return line[:10].lower() == "bootstrap:"


def is_section_line(line: str) -> bool:
    """A line whose first word starts with ``%`` opens a section (Apptainer's scanner)."""
    return line.lstrip().startswith("%")


def is_blank(line: str) -> bool:
    """Whitespace-only line."""
    return not line.strip()


def is_comment_or_blank(line: str) -> bool:
    """Lines the header, %labels and %files skip."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def normalise_body(lines: list[str]) -> str:
    """Script text without leading and trailing blank lines; other lines verbatim."""
    start, end = 0, len(lines)
    while start < end and is_blank(lines[start]):
        start += 1
    while end > start and is_blank(lines[end - 1]):
        end -= 1
    return "\n".join(lines[start:end])


def split_label(line: str) -> tuple[str, str]:
    """``KEY VALUE`` split at the first space, as Apptainer does (a tab does not split)."""
    key, _, value = line.strip().partition(" ")
    return key.strip(), value.strip()


def _continued(value: str) -> str:
    """A header value ending in ``\\``, without it; ``\\n`` before it becomes a newline."""
    value = value[:-1]
    return value[:-2] + "\n" if value.endswith("\\n") else value


def split_paths(text: str) -> list[str]:
    """Split a %files line into paths: blank-separated, "..." or '...' quoted, ``#`` comment.

    Raises ValueError with a short reason for unbalanced quotes.
    """
    paths: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            break
        elif char in "\"'":
            end = text.find(char, i + 1)
            if end < 0:
                raise ValueError(f"unterminated {char} quote")
            if end + 1 < n and not text[end + 1].isspace():
                raise ValueError("text right after a closing quote")
            paths.append(text[i + 1 : end])
            i = end + 1
        else:
            end = i
            while end < n and not text[end].isspace():
                end += 1
            paths.append(text[i:end])
            i = end
    return paths


@dataclass
class _Section:
    """A section as found: its name, arguments, header line and body lines."""

    name: str
    args: str
    line: int
    body: list[str] = field(default_factory=list)


@dataclass
class _StageBuilder:
    """Collects one stage's parts and problems while its chunk is scanned."""

    filename: str
    problems: list[DefFileError]
    header: list[tuple[str, str, int]] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)
    files: dict[str | None, FilesSection] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def error(self, line: int, message: str) -> None:
        self.problems.append(DefFileError(self.filename, line, message))

    # -- header ---------------------------------------------------------------

    def add_header(self, key: str, value: str, line: int) -> None:
        if not key:
            self.error(line, "header line has no key before ':'")
            return
        canonical = canonical_key(key)
        if canonical is None:
            self.error(line, f"unknown header key {show(key)}")
            return
        for known, _, first in self.header:
            if known == canonical:
                self.error(line, f"duplicate header key {canonical} (first on line {first})")
                return
        self.header.append((canonical, value.strip(), line))

    def scan_header(self, lines: list[tuple[int, str]]) -> None:
        """Read ``Key: value`` lines; ``#`` starts a comment; a final ``\\`` continues.

        As in Apptainer, a continued value goes on with the next line's text
        (its blanks stripped), and ``\\n`` right before the ``\\`` is a newline.
        """
        pending: tuple[str, str, int] | None = None
        for number, raw in lines:
            if is_comment_or_blank(raw):
                if pending:
                    self.error(pending[2], "line continuation '\\' without a following line")
                    self.add_header(*pending)
                    pending = None
                continue
            text = raw.split("#", 1)[0].strip()
            if pending:
                key, value, line = pending[0], pending[1] + text, pending[2]
            else:
                key, colon, value = text.partition(":")
                if not colon:
                    self.error(number, f"expected 'Key: value' in header, got {show(text)}")
                    continue
                key, value, line = key.strip(), value.strip(), number
            pending = (key, _continued(value), line) if value.endswith("\\") else None
            if pending is None:
                self.add_header(key, value, line)
        if pending:
            self.error(pending[2], "line continuation '\\' without a following line")
            self.add_header(*pending)

    # -- sections -------------------------------------------------------------

    def add_section(self, section: _Section) -> None:
        name = section.name
        if name in SCRIPT_SECTIONS:
            self.add_script(section)
        elif name == "files":
            self.add_files(section)
        elif name == "labels":
            self.add_labels(section)
        elif name in APP_SECTIONS:
            self.error(section.line, f"SCIF app sections (%{name}) are not supported")
        elif name in UNSUPPORTED_SECTIONS:
            self.error(section.line, UNSUPPORTED_SECTIONS[name])
        else:
            self.error(section.line, f"unknown section {show('%' + name)}")

    def add_script(self, section: _Section) -> None:
        """Repeated script sections are appended, as Apptainer does."""
        body = normalise_body(section.body)
        old = self.scripts.get(section.name)
        if old is None:
            self.scripts[section.name] = Script(body, section.args, section.line)
            return
        if old.args and section.args and old.args != section.args:
            self.error(
                section.line,
                f"%{section.name} arguments {show(section.args)} differ from "
                f"{show(old.args)} on line {old.line}",
            )
        joined = "\n".join(part for part in (old.body, body) if part)
        self.scripts[section.name] = Script(joined, old.args or section.args, old.line)

    def files_stage(self, section: _Section) -> tuple[bool, str | None]:
        """Stage named by ``%files from NAME``; (False, None) after reporting bad arguments."""
        words = section.args.split("#", 1)[0].split()
        if not words:
            return True, None
        if words[0].lower() == "from" and len(words) == 2:
            return True, words[1]
        if words[0].lower() == "from":
            self.error(section.line, "%files from needs exactly one stage name")
        else:
            self.error(section.line, f"unexpected %files arguments {show(section.args)}")
        return False, None

    def add_files(self, section: _Section) -> None:
        """%files sections with the same source stage are merged, as Apptainer does."""
        ok, stage = self.files_stage(section)
        transfers = list(self.transfers(section))
        if not ok:
            return
        old = self.files.get(stage)
        if old is None:
            self.files[stage] = FilesSection(stage, tuple(transfers), section.line)
        else:
            merged = old.transfers + tuple(transfers)
            self.files[stage] = FilesSection(stage, merged, old.line)

    def transfers(self, section: _Section) -> Iterator[FileTransfer]:
        """``SRC [DST]`` lines; blank and comment lines are skipped."""
        for number, raw in enumerate(section.body, start=section.line + 1):
            if is_comment_or_blank(raw):
                continue
            try:
                paths = split_paths(raw)
            except ValueError as err:
                self.error(number, f"bad %files line: {err}")
                continue
            if len(paths) > 2:
                self.error(number, "too many paths in %files line (expected SRC [DST])")
            elif "" in paths:
                self.error(number, "empty path in %files line")
            elif paths:
                yield FileTransfer(paths[0], paths[-1], number)

    def add_labels(self, section: _Section) -> None:
        """``KEY VALUE`` per line; a later KEY wins."""
        if section.args:
            self.error(section.line, "%labels takes no arguments; put KEY VALUE on the next line")
        for raw in section.body:
            if is_comment_or_blank(raw):
                continue
            key, value = split_label(raw)
            self.labels[key] = value

    def build(self, first_line: int) -> Stage:
        """Freeze the stage; the Bootstrap key goes first whatever its place in the file."""
        header = sorted(self.header, key=lambda entry: entry[0] != "Bootstrap")
        line = next((ln for key, _, ln in header if key == "Bootstrap"), first_line)
        return Stage(
            header=tuple((key, value) for key, value, _ in header),
            files=tuple(self.files.values()),
            labels=tuple(self.labels.items()),
            line=line,
            header_lines=tuple(ln for _, _, ln in header),
            **self.scripts,
        )


def _lines(text: str) -> list[str]:
    """Split on LF only; drop the CRs of CRLF endings and a byte-order mark."""
    return [line.rstrip("\r") for line in text.removeprefix("\ufeff").split("\n")]


def _chunks(lines: list[str]) -> Iterator[list[tuple[int, str]]]:
    """Numbered lines of each stage: a new one starts at every ``bootstrap:`` line."""
    chunk: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if is_stage_start(line) and chunk:
            yield chunk
            chunk = []
        chunk.append((number, line))
    yield chunk


def _split_sections(chunk: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], list[_Section]]:
    """Header lines (before the first section) and the sections of one stage chunk."""
    header: list[tuple[int, str]] = []
    sections: list[_Section] = []
    for number, line in chunk:
        if is_section_line(line):
            word, *rest = line.split(None, 1)
            args = rest[0].strip() if rest else ""
            sections.append(_Section(word.lstrip("%").lower(), args, number))
        elif sections:
            sections[-1].body.append(line)
        else:
            header.append((number, line))
    return header, sections


def _scan_stage(chunk: list[tuple[int, str]], builder: _StageBuilder) -> Stage | None:
    """Stage of one chunk; None for a chunk of only comments and blank lines."""
    content = [number for number, line in chunk if not is_comment_or_blank(line)]
    if not content:
        return None
    header, sections = _split_sections(chunk)
    builder.scan_header(header)
    for section in sections:
        builder.add_section(section)
    return builder.build(content[0])


# Characters that some readers take for line breaks and others do not (Python's
# ``str.splitlines()`` splits on form feed, U+2028 and more, Apptainer's parser on
# none), NUL, which ends strings in the C tools that read the file next, and terminal
# controls (an escape sequence can hide a line from whoever reads the file or its log):
# every control character but the tab.  Scripts write ``printf '\033'`` instead.
CONFUSING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def confusing_characters(lines: list[str], filename: str) -> list[DefFileError]:
    """One problem per line holding such a character (CRLF line ends are fine)."""
    out = []
    for number, line in enumerate(lines, start=1):
        if found := CONFUSING.search(line):
            out.append(DefFileError(filename, number, f"control character "
                                    f"U+{ord(found.group()):04X} in the line; definition "
                                    "files are plain text with LF (or CRLF) line ends"))
    return out


def scan(text: str, filename: str = "<string>") -> tuple[Definition, list[DefFileError]]:
    """Best-effort model of *text* plus its syntax problems (no semantic checks)."""
    lines = _lines(text)
    problems: list[DefFileError] = confusing_characters(lines, filename)
    stages = []
    for chunk in _chunks(lines):
        stage = _scan_stage(chunk, _StageBuilder(filename, problems))
        if stage is not None:
            stages.append(stage)
    return Definition(tuple(stages)), problems


def stored_text(text: str) -> str:
    """The definition as Apptainer stores it in the image: without a preamble of only
    comments and blank lines before the first ``Bootstrap:`` line (a stage it drops)."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if is_stage_start(line):
            return "\n".join(lines[number:])
        if not is_comment_or_blank(line.rstrip("\r")):
            break
    return text


def diagnose(text: str, filename: str = "<string>") -> tuple[Definition, list[DefFileError]]:
    """Model of *text* and all its problems, syntax and semantic, in line order."""
    definition, problems = scan(text, filename)
    problems = problems + validate(definition, filename)
    return definition, sorted(problems, key=lambda problem: problem.line)


def parse(text: str, filename: str = "<string>") -> Definition:
    """Parse and validate *text*; raise the first problem as DefFileError."""
    definition, problems = diagnose(text, filename)
    if problems:
        raise problems[0]
    return definition
