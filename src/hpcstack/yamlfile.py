"""Site files in YAML, validated by a pydantic model, with errors that name the field.

Every admin-facing file (the modules site, the catalog, the studio config)
loads through :func:`parse`, so a mistake reads the same everywhere::

    site.yaml:7: mapping values are not allowed here       (YAML itself)
    site.yaml: apps[0].gpu: Input should be 'nvidia' or 'amd'
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hpcstack.errors import UserError

M = TypeVar("M", bound=BaseModel)


def field_path(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as ``apps[0].gpu``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and ("[" in part or "(" in part):
            continue  # pydantic's union member tags, e.g. "list[str]"
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse(text: str, model: type[M], where: str, *, empty_ok: bool = False) -> M:
    """``text`` as ``model``; the first problem as one :class:`UserError` line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{where}{line}: {problem}") from None
    if data is None and empty_ok:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{where}: {field_path(first['loc'])}: {msg}") from None


def read(path: Path) -> str:
    """A site file's text, or one line saying why it cannot be read."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
