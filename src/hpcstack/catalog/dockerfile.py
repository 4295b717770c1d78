"""Dockerfile words as BuildKit reads them: quoted LABEL and ENV values.

Inside double quotes BuildKit's lexer (and buildah's, and dockerfile-parse's)
treats a backslash before ``"``, ``$`` or ``\\`` as an escape and expands
``$VAR``.  A label is data: all three are escaped, so it comes back from the
built image exactly as the catalog wrote it.  An ENV value keeps ``$`` live
(``PATH="/opt/x/bin:$PATH"``, as the definition's ``export`` does).  Neither
can hold a line break: a Dockerfile has no way to write one in a value.  Pure.
"""

from __future__ import annotations

from collections.abc import Mapping


def quote(value: str, *, expand: bool = False) -> str:
    """``value`` as one double-quoted Dockerfile word; ``expand`` keeps ``$VAR`` live."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"{value!r}: a Dockerfile value cannot hold a line break")
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{out if expand else out.replace("$", chr(92) + "$")}"'


def labels(values: Mapping[str, str]) -> str:
    """One ``LABEL`` line per key (each readable, each diffable)."""
    return "".join(f"LABEL {key}={quote(value)}\n" for key, value in values.items())


def env(values: Mapping[str, str]) -> str:
    """One ``ENV`` line per variable, ``$VAR`` expanded as in a shell's double quotes."""
    return "".join(f"ENV {key}={quote(value, expand=True)}\n" for key, value in values.items())
