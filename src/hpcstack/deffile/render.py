"""Render the model as canonical definition-file text.

The output parses back to an equal model.  Content the syntax cannot express
(a script line starting with ``%``, a header value holding ``#``...) raises
ValueError instead of producing a file that would mean something else.
"""

from __future__ import annotations

from collections.abc import Iterator

from hpcstack.deffile.model import Definition, FilesSection, Script, Stage
from hpcstack.deffile.parser import (
    canonical_key,
    is_section_line,
    is_stage_start,
    normalise_body,
)

INDENT = "    "
# Sections in the order of Apptainer's documentation (roughly the build order).
_ORDER = (
    "setup",
    "files",
    "environment",
    "post",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
)


def _require(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ValueError(f"cannot render {where}: {what}")


def _one_line(text: str) -> bool:
    """Text the parser reads back unchanged from the end of a line."""
    return text == text.strip() and "\n" not in text


def _header_text(stage: Stage, where: str, first_stage: bool) -> str:
    """The header lines; none for a first stage without one (Apptainer builds on the host's
    choice then, and a later stage without one would merge into the one before)."""
    if not stage.header and first_stage:
        return ""
    first = stage.header[0][0] if stage.header else None
    _require(first == "Bootstrap", where, "Bootstrap must come first")
    keys = [key for key, _ in stage.header]
    _require(len(set(keys)) == len(keys), where, "duplicate header key")
    lines = []
    for key, value in stage.header:
        at = f"{where} header {key}"
        _require(canonical_key(key) == key, at, "unknown or non-canonical key")
        lines.append(_header_line(key, value, at))
    return "\n".join(lines)


def _header_line(key: str, value: str, at: str) -> str:
    """``Key: value``; a newline in the value is written ``\\n\\`` and the value goes on
    on the next line (which the parser reads with its blanks stripped)."""
    parts = value.split("\n")
    for index, part in enumerate(parts):
        _require(part == part.strip(), at, "value has outer blanks around a line")
        _require("#" not in part and not part.endswith("\\"), at,
                 "value has '#' or a line ending in '\\'")
        if index:
            _require(not part.startswith("%") and not is_stage_start(part), at,
                     "a value line starts with '%' or 'bootstrap:'")
    _require(len(parts) == 1 or bool(parts[-1]), at, "value ends with a newline")
    text = f"\\n\\\n{INDENT}".join(parts)
    return f"{key}: {text}" if value else f"{key}:"


def _script_text(name: str, script: Script, where: str) -> str:
    at = f"{where} %{name}"
    args = script.args
    _require(_one_line(args), at, "arguments have outer blanks or a newline")
    lines = script.body.split("\n")
    _require(normalise_body(lines) == script.body, at, "body has leading or trailing blank lines")
    for number, line in enumerate(lines, start=1):
        bad = is_section_line(line) or is_stage_start(line) or line.endswith("\r")
        _require(not bad, f"{at} body line {number}", "starts with '%', 'bootstrap:' or ends in CR")
    head = f"%{name} {args}" if args else f"%{name}"
    return f"{head}\n{script.body}" if script.body else head


def _path_text(path: str, at: str) -> str:
    """A path as a %files token, quoted when blanks or a leading quote/#/% require it."""
    _require(bool(path) and "\n" not in path, at, "empty path or newline")
    if not any(char.isspace() for char in path) and path[0] not in "\"'#%":
        return path
    quote = '"' if '"' not in path else "'"
    _require(quote not in path, at, "path holds blanks and both quote characters")
    return f"{quote}{path}{quote}"


def _files_text(section: FilesSection, where: str) -> str:
    stage = section.stage
    at = f"{where} %files" + (f" from {stage}" if stage is not None else "")
    if stage is not None:
        plain = stage and not any(c.isspace() for c in stage) and "#" not in stage
        _require(bool(plain), at, "stage name must be one word without '#'")
    lines = [f"%files from {stage}" if stage is not None else "%files"]
    for transfer in section.transfers:
        paths = [transfer.src] if transfer.dst == transfer.src else [transfer.src, transfer.dst]
        lines.append(INDENT + " ".join(_path_text(path, at) for path in paths))
    return "\n".join(lines)


def _labels_text(labels: tuple[tuple[str, str], ...], where: str) -> str:
    keys = [key for key, _ in labels]
    _require(len(set(keys)) == len(keys), where, "duplicate label")
    lines = ["%labels"]
    for key, value in labels:
        at = f"{where} label {key!r}"
        plain = key and key == key.strip() and " " not in key and "\n" not in key
        _require(bool(plain) and key[0] not in "#%", at,
                 "key must be one word (no space) not starting with '#' or '%'")
        _require(_one_line(value), at, "value has outer blanks or a newline")
        lines.append(f"{INDENT}{key} {value}" if value else f"{INDENT}{key}")
    return "\n".join(lines)


def _sections(stage: Stage, where: str) -> Iterator[str]:
    for name in _ORDER:
        if name == "files":
            yield from (_files_text(section, where) for section in stage.files)
        elif name == "labels":
            if stage.labels:
                yield _labels_text(stage.labels, where)
        elif (script := stage.script(name)) is not None:
            yield _script_text(name, script, where)


def _stage_text(stage: Stage, where: str, first_stage: bool) -> str:
    names = {section.stage for section in stage.files}
    _require(len(names) == len(stage.files), where, "two %files sections from the same stage")
    blocks = [_header_text(stage, where, first_stage), *_sections(stage, where)]
    return "\n\n".join(block for block in blocks if block) + "\n"


def render(definition: Definition) -> str:
    """Canonical text of *definition*: ``parse(render(d)) == d`` for every valid *d*.

    Also for what only ``check`` refuses but Apptainer builds, such as a file
    without a header: ``hpcstack def show`` prints those with warnings.
    """
    stages = definition.stages
    return "\n".join(_stage_text(stage, f"stage {i}", i == 1)
                     for i, stage in enumerate(stages, 1))
