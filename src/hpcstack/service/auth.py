"""Who is calling: a MUNGE credential (cluster users) or an admin-issued API token.

MUNGE is decoded by ``unmunge`` against the site's ``munged``; munged itself
refuses a credential decoded before (replay) or past its TTL (expired), and
its exit status says which.  The UID comes from the credential, never from
the request.
"""

from __future__ import annotations

import pwd
import re
import secrets
import subprocess
from dataclasses import dataclass

from sqlalchemy import select

from hpcstack.service import db
from hpcstack.service.models import Identity, TokenInfo

MUNGE_HEADER = "X-Munge-Credential"
TOKEN_ID_LEN = 12
# unmunge exit statuses (munge_err_t) a client can cause, and what to tell it.
MUNGE_ERRORS = {15: "expired", 16: "rewound (clock skew)", 17: "replayed"}


class AuthError(Exception):
    """Missing or bad credential: a 401 with this one-line reason."""


@dataclass(frozen=True)
class Decoded:
    uid: int
    gid: int


def parse_unmunge(text: str) -> Decoded:
    """UID and GID from ``unmunge``'s metadata lines (``UID: name (1001)``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        uid = int(fields["UID"].rsplit("(", 1)[1].rstrip(")"))
        gid = int(fields["GID"].rsplit("(", 1)[1].rstrip(")"))
    except (KeyError, IndexError, ValueError):
        raise AuthError("MUNGE credential: cannot read its UID") from None
    return Decoded(uid, gid)


def decode_munge(cred: str, socket: str | None) -> Decoded:
    """Decode ``cred`` with ``unmunge``; replayed, expired or forged ones raise AuthError."""
    argv = ["unmunge", "--output=/dev/null"]
    if socket:
        argv.append(f"--socket={socket}")
    try:
        proc = subprocess.run(argv, input=cred.encode(), capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise AuthError(f"MUNGE: unmunge failed: {err}") from None
    if proc.returncode in MUNGE_ERRORS:
        raise AuthError(f"MUNGE credential {MUNGE_ERRORS[proc.returncode]}")
    if proc.returncode != 0:
        raise AuthError("MUNGE credential invalid")
    return parse_unmunge(proc.stdout.decode(errors="replace"))


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def user_uid(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ValueError(f"user {name!r}: no such user on this system") from None


def identify(headers, database: db.Database, munge_socket: str | None,
             admins: list[str]) -> Identity:
    """The caller's identity from a request's headers; AuthError if none holds."""
    authz = headers.get("authorization") or ""
    scheme, _, value = authz.partition(" ")
    if scheme.lower() == "bearer" and value:
        with database.session() as s:
            row = s.get(db.TokenRow, db.token_digest(value.strip()))
            if row is None:
                raise AuthError("API token unknown or revoked")
            return Identity(user=row.user, uid=row.uid, admin=row.admin, method="token")
    cred = headers.get(MUNGE_HEADER.lower()) or (value if scheme.lower() == "munge" else "")
    if not cred:
        raise AuthError(f"no credential: send a MUNGE credential in {MUNGE_HEADER} "
                        "or an API token as 'Authorization: Bearer TOKEN'")
    decoded = decode_munge(cred.strip(), munge_socket)
    name = user_name(decoded.uid)
    return Identity(user=name, uid=decoded.uid, admin=name in admins or decoded.uid == 0,
                    method="munge")


def issue_token(database: db.Database, user: str, uid: int, admin: bool) -> tuple[str, TokenInfo]:
    """A new token (the secret, shown once) and its record."""
    token = "u2cb_" + secrets.token_urlsafe(32)
    with database.session() as s:
        row = db.TokenRow(digest=db.token_digest(token), user=user, uid=uid, admin=admin)
        s.add(row)
        s.flush()
        return token, token_info(row)


def token_info(row: db.TokenRow) -> TokenInfo:
    return TokenInfo(id=row.digest[:TOKEN_ID_LEN], user=row.user, uid=row.uid,
                     admin=row.admin, created=row.created)


def list_tokens(database: db.Database) -> list[TokenInfo]:
    with database.session() as s:
        rows = s.scalars(select(db.TokenRow).order_by(db.TokenRow.created))
        return [token_info(r) for r in rows]


def revoke_token(database: db.Database, token_id: str) -> bool:
    """Delete the token whose id is ``token_id``; whether there was one."""
    if not re.fullmatch(f"[0-9a-f]{{{TOKEN_ID_LEN}}}", token_id):
        return False
    with database.session() as s:
        rows = list(s.scalars(select(db.TokenRow).where(
            db.TokenRow.digest.startswith(token_id))))
        for row in rows:
            s.delete(row)
        return bool(rows)
