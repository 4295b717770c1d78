"""Typed models at the API boundary, and the pure rules on names and states.

Everything here is free of I/O so it can be tested fast and exhaustively.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

NAME_MAX = 64
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class Kind(StrEnum):
    """``def``: an image built from a definition file; ``img``: a sandbox from a base image."""

    DEF = "def"
    IMG = "img"


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE = frozenset({State.QUEUED, State.RUNNING})
FINISHED = frozenset({State.READY, State.FAILED, State.CANCELLED})


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a container (it ends up in paths and URLs), or None."""
    if not name:
        return "name: must not be empty"
    if len(name) > NAME_MAX:
        return f"name: {len(name)} characters, at most {NAME_MAX} allowed"
    if "/" in name or ".." in name:
        return f"name {name!r}: must not contain '/' or '..'"
    if not NAME_RE.fullmatch(name):
        return (f"name {name!r}: use letters, digits and . _ + - "
                "(starting with a letter or digit)")
    return None


def upload_problem(path: str) -> str | None:
    """Why an uploaded ``%files`` path cannot be stored next to the definition, or None."""
    if not path or path.startswith("/") or "\\" in path:
        return f"{path!r}: upload paths must be relative to the definition file"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"{path!r}: upload paths must not contain '.', '..' or empty parts"
    return None


class Error(BaseModel):
    """Every error response: one line a client prints as it is."""

    detail: str


class CreateRequest(BaseModel):
    """A sandbox from a base image: ``docker://REF``, ``debootstrap://SUITE`` or a NAME
    of one of your own containers."""

    name: str = Field(max_length=300)
    base: str = Field(max_length=1000)


class Container(BaseModel):
    name: str
    owner: str
    uid: int
    kind: Kind
    source: str
    state: State
    reason: str | None = None
    attempts: int = 0
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    size: int | None = None
    sha256: str | None = None


class ContainerList(BaseModel):
    containers: list[Container]


class LogChunk(BaseModel):
    """Bytes ``offset``..``next_offset`` of the build log; ``done`` once the build ended."""

    text: str
    offset: int
    next_offset: int
    done: bool


class Artifact(BaseModel):
    """What ``download`` fetches: a SIF, its size and its sha256."""

    name: str
    size: int
    sha256: str


class TokenRequest(BaseModel):
    """An API token for a portal acting for ``user`` (admins only)."""

    user: str = Field(max_length=64)
    admin: bool = False


class TokenInfo(BaseModel):
    """An issued API token, without its secret: ``id`` is what ``revoke`` takes."""

    id: str = Field(description="the first 12 hex digits of the token's sha256")
    user: str
    uid: int
    admin: bool
    created: datetime


class Token(TokenInfo):
    """A newly issued token: the only time its secret is shown."""

    token: str


class TokenList(BaseModel):
    tokens: list[TokenInfo]


class Identity(BaseModel):
    user: str
    uid: int
    admin: bool
    method: str


class Health(BaseModel):
    status: str
    version: str
    executor: str
    database: str
