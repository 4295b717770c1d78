"""Typed models at the API boundary, and the pure rules on names and states.

Everything here is free of I/O so it can be tested fast and exhaustively.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

NAME_MAX = 64
# Letters, digits and . _ + -, starting with a letter or digit, never two dots in a row, and
# not ``def`` (``/containers/def`` is defcreate): exactly what ``name_problem`` accepts (with
# the length), so the spec says what the service enforces.
RESERVED_NAMES = frozenset({"def"})
_NAME = r"[A-Za-z0-9](\.?[A-Za-z0-9_+-])*\.?"
NAME_PATTERN = rf"^(?!def$){_NAME}$"
NAME_RE = re.compile(NAME_PATTERN)
# What ``create -b`` takes: docker://REF, debootstrap://SUITE or one of your containers.
BASE_MAX = 1000
BASE_PATTERN = (r"^(?:docker://[^\s\x00-\x1f\x7f-\x9f]+"
                r"|debootstrap://[A-Za-z0-9-]*[A-Za-z0-9][A-Za-z0-9-]*"
                rf"|(?!def$){_NAME})$")
BASE_RE = re.compile(BASE_PATTERN)
# A user name as sites have them (POSIX portable characters, SSSD's user@domain, Samba's $).
USER_MAX = 64
USER_PATTERN = r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*\$?$"
USER_RE = re.compile(USER_PATTERN)
COMPONENT_MAX_BYTES = 255  # one file name, as Linux file systems allow
PATH_MAX_BYTES = 1024  # a whole upload path


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


def bad_character(text: str) -> str | None:
    """The first character no name or path may hold, described (``NUL``, ``U+0085``), or None.

    Control characters (C0, DEL, C1), the Unicode line and paragraph separators, and lone
    surrogates (not encodable as a file name): each would split a log line or a message.
    """
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            return "NUL" if ch == "\0" else f"U+{ord(ch):04X}"
    return None


def _no_controls(what: str, bad: str) -> str:
    return f"{what}: must not contain NUL, control characters or line separators ({bad})"


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a one-line message, cut short when long."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _text_problem(text: str, what: str, limit: int, *, empty_ok: bool = False) -> str | None:
    """What every name-like field must be: not empty, not too long, no control characters."""
    if not text and not empty_ok:
        return f"{what}: must not be empty"
    if len(text) > limit:
        return f"{what}: {len(text)} characters, at most {limit} allowed"
    if bad := bad_character(text):
        return _no_controls(what, bad)
    return None


def name_problem(name: str, what: str = "name") -> str | None:
    """Why ``name`` cannot name a container (it ends up in URLs and messages), or None.

    The rule: 1 to 64 characters, letters, digits and ``. _ + -``, starting with a letter
    or a digit, never ``..`` (so never ``.``, ``..``, ``/``, NUL or a control character).
    """
    if problem := _text_problem(name, what, NAME_MAX):
        return problem
    if "/" in name or ".." in name:
        return f"{what} {shown(name)}: must not contain '/' or '..'"
    if name in RESERVED_NAMES:
        return f"{what} {shown(name)}: reserved (a path of the API)"
    if not NAME_RE.fullmatch(name):
        return (f"{what} {shown(name)}: use letters, digits and . _ + - "
                "(starting with a letter or digit)")
    return None


def base_problem(base: str, what: str = "base") -> str | None:
    """Why ``base`` cannot be what a sandbox starts from, or None (see ``BASE_PATTERN``)."""
    if problem := _text_problem(base, what, BASE_MAX, empty_ok=True):
        return problem
    if not BASE_RE.fullmatch(base):
        return (f"{what} {shown(base)}: use docker://REF, debootstrap://SUITE or the name "
                "of one of your containers")
    return None


def user_problem(user: str, what: str = "owner") -> str | None:
    """Why ``user`` cannot be a user name, or None (1..64 of ``A-Z a-z 0-9 . _ - @``)."""
    if problem := _text_problem(user, what, USER_MAX):
        return problem
    if not USER_RE.fullmatch(user):
        return f"{what} {shown(user)}: not a user name"
    return None


def path_problem(path: str, what: str = "paths", single: bool = False) -> str | None:
    """Why ``path`` cannot be stored under the definition's directory, or None.

    A relative path of ``/``-separated components, none empty, ``.`` or ``..``, each at
    most 255 bytes (UTF-8) and the whole at most 1024; no NUL, control character, line
    separator or backslash.  ``single``: one component only (the definition's file name).
    """
    if not path:
        return f"{what}: must not be empty"
    if bad := bad_character(path):
        return _no_controls(what, bad)
    size = len(path.encode())
    if size > PATH_MAX_BYTES:
        return f"{what}: {size} bytes, at most {PATH_MAX_BYTES} allowed"
    if single and "/" in path:
        return f"{what} {shown(path)}: a file name, not a path"
    if path.startswith("/") or "\\" in path:
        return f"{what} {shown(path)}: must be relative to the definition file"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"{what} {shown(path)}: must not contain '.', '..' or empty parts"
        if len(part.encode()) > COMPONENT_MAX_BYTES:
            return (f"{what}: {'a name' if single else 'a part'} of {len(part.encode())} "
                    f"bytes, at most {COMPONENT_MAX_BYTES} allowed")
    return None


def upload_problem(path: str) -> str | None:
    """Why an uploaded ``%files`` path cannot be stored next to the definition, or None."""
    return path_problem(path, "paths")


def _checked(problem_of: Callable[[str, str], str | None], what: str):
    def check(value: str) -> str:
        if problem := problem_of(value, what):
            raise PydanticCustomError(INPUT_ERROR, "{problem}", {"problem": problem})
        return value

    return AfterValidator(check)


INPUT_ERROR = "u2cb_input"  # a validation error whose message is the whole one-line detail
NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": NAME_MAX,
               "pattern": NAME_PATTERN}
USER_SCHEMA = {"type": "string", "minLength": 1, "maxLength": USER_MAX,
               "pattern": USER_PATTERN}
BASE_SCHEMA = {"type": "string", "minLength": 1, "maxLength": BASE_MAX, "pattern": BASE_PATTERN}


# An upload path as a pattern (``path_problem`` also counts bytes: 255 a part, 1024 in all).
_PART = r"(?!\.\.?(?:/|$))[^/\\\x00-\x1f\x7f-\x9f\u2028\u2029]+"
PATH_PATTERN = rf"^{_PART}(?:/{_PART})*$"
PATH_SCHEMA = {"type": "string", "minLength": 1, "maxLength": PATH_MAX_BYTES,
               "pattern": PATH_PATTERN,
               "description": "relative to the definition file: no '.', '..' or empty parts, "
               "at most 255 bytes a part and 1024 in all (UTF-8)"}

# Strings checked by the rules above, with those rules stated in the OpenAPI spec.
ContainerName = Annotated[str, _checked(name_problem, "name"), WithJsonSchema(NAME_SCHEMA)]
OwnerName = Annotated[str, _checked(user_problem, "owner"), WithJsonSchema(USER_SCHEMA)]
TokenUser = Annotated[str, _checked(user_problem, "user"), WithJsonSchema(USER_SCHEMA)]
BaseRef = Annotated[str, _checked(base_problem, "base"), WithJsonSchema(BASE_SCHEMA)]
UploadPath = Annotated[str, _checked(path_problem, "paths"), WithJsonSchema(PATH_SCHEMA)]


class DefCreateForm(BaseModel):
    """The multipart body of ``defcreate``: the definition and the files its ``%files``
    names, each stored at the path given for it (``paths[i]`` for ``files[i]``).

    The service reads this body as it streams (``service.uploads``); this model states
    it in the OpenAPI spec.  The definition's file name obeys the rule of one path part.
    """

    name: ContainerName
    definition: bytes = Field(json_schema_extra={"format": "binary"},
                              description="the definition file, sent with its file name "
                              "(one path part: no '/', '.', '..', control characters, "
                              "at most 255 bytes)")
    files: list[bytes] = Field(default=[], json_schema_extra={
        "items": {"type": "string", "format": "binary"}})
    paths: list[UploadPath] = []


def _utc(value: object) -> object:
    """Times are stored in UTC; SQLite hands them back without their zone."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# An RFC 3339 date-time with its offset, as the spec's ``format: date-time`` promises.
UtcTime = Annotated[AwareDatetime, BeforeValidator(_utc)]


class Error(BaseModel):
    """Every error response: one line a client prints as it is."""

    detail: str


class CreateRequest(BaseModel):
    """A sandbox from a base image: ``docker://REF``, ``debootstrap://SUITE`` or a NAME
    of one of your own containers."""

    name: ContainerName
    base: BaseRef


class Container(BaseModel):
    name: str
    owner: str
    uid: int
    kind: Kind
    source: str
    state: State
    reason: str | None = None
    attempts: int = 0
    created: UtcTime
    started: UtcTime | None = None
    finished: UtcTime | None = None
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

    user: TokenUser
    admin: bool = False


class TokenInfo(BaseModel):
    """An issued API token, without its secret: ``id`` is what ``revoke`` takes."""

    id: str = Field(description="the first 12 hex digits of the token's sha256")
    user: str
    uid: int
    admin: bool
    created: UtcTime


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


class NodeCheck(BaseModel):
    """One finding of ``hpcstack doctor`` on the service's node."""

    check: str
    status: Literal["ok", "warn", "fail"]
    message: str
    fix: str = ""


class Health(BaseModel):
    status: str = Field(description="ok; with deep=1, degraded when a node check failed")
    version: str
    executor: str
    database: str
    checks: list[NodeCheck] | None = Field(None, description="with deep=1: every node check "
                                           "(hpcstack doctor's)")
