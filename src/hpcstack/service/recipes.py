"""What a request asks to build, checked before anything runs (pure, no I/O).

The build runs as the service's account, so a definition may only read what
the user uploaded with it: ``%files`` sources are relative paths among the
uploads, and ``Bootstrap: localimage`` names one of the user's own containers.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from hpcstack.deffile import Definition, check, parse
from hpcstack.deffile.model import DefFileError
from hpcstack.errors import UserError
from hpcstack.service.models import name_problem

# For ``create -b``: URI schemes a base may use, and the sandbox build spec they become.
BASE_SCHEMES = ("docker", "debootstrap")


def check_definition(text: str, filename: str, uploads: set[str]) -> Definition:
    """Parse ``text``; raise one ``FILE:LINE: message`` UserError for the first problem."""
    problems = check(text, filename)
    if problems:
        raise UserError(str(problems[0]))
    defn = parse(text, filename)
    for stage in defn.stages:
        for section in stage.files:
            if section.stage is not None:
                continue
            for t in section.transfers:
                _check_transfer(filename, t.line, t.src, uploads)
    return defn


def _check_transfer(filename: str, line: int, src: str, uploads: set[str]) -> None:
    if src.startswith(("/", "~")) or ".." in src.split("/"):
        raise DefFileError(filename, line, f"%files: {src}: the build service takes only "
                           "paths relative to the definition file (they are uploaded)")
    if not any(fnmatch.fnmatch(u, src) or u.startswith(src.rstrip("/") + "/")
               for u in uploads):
        raise DefFileError(filename, line, f"%files: {src}: not uploaded with the definition")


def localimage_rewrites(defn: Definition, filename: str,
                        resolve: Callable[[str], str | None]) -> dict[int, str]:
    """Line number -> replacement ``From:`` line for ``localimage`` stages.

    ``From`` names one of the user's containers; ``resolve`` maps a name to its
    image path on the service, or None when the user has no such container.
    """
    out: dict[int, str] = {}
    for stage in defn.stages:
        if (stage.bootstrap or "").lower() != "localimage":
            continue
        ref = stage.get("From") or ""
        line = stage.line_of("From")
        path = None if name_problem(ref) else resolve(ref)
        if path is None:
            raise DefFileError(filename, line, f"From: {ref}: localimage must name one of "
                               "your containers on the build service")
        out[line] = f"From: {path}"
    return out


def rewrite_lines(text: str, rewrites: dict[int, str]) -> str:
    lines = text.splitlines(keepends=True)
    for number, new in rewrites.items():
        lines[number - 1] = new + "\n"
    return "".join(lines)


def base_spec(base: str, resolve: Callable[[str], str | None]) -> tuple[str, str | None]:
    """(build spec, definition text or None) for ``create -b BASE``."""
    scheme, sep, rest = base.partition("://")
    if sep and scheme == "docker":
        if not rest or any(c.isspace() for c in rest):
            raise UserError(f"base {base!r}: expected docker://REGISTRY/IMAGE:TAG")
        return base, None
    if sep and scheme == "debootstrap":
        if not rest.replace("-", "").isalnum():
            raise UserError(f"base {base!r}: expected debootstrap://SUITE (e.g. bookworm)")
        return "", f"Bootstrap: debootstrap\nOSVersion: {rest}\n"
    if sep:
        raise UserError(f"base {base!r}: use docker://REF, debootstrap://SUITE or the "
                        "name of one of your containers")
    path = None if name_problem(base) else resolve(base)
    if path is None:
        raise UserError(f"base {base!r}: no container of yours with that name")
    return path, None
