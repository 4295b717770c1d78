"""``u2cb list`` for scripts and portals: answered with the standard library alone.

Portals and users' scripts poll the list all the time, and each call used to pay
for importing Typer, Rich, httpx and pydantic (four times the request itself).
When the command line is a plain ``[--server URL] list [def|img] [--json]
[--all]`` and the output is not a terminal, :func:`main` answers it with one
HTTP/1.0 request on a socket (``http.client`` for an ``https://`` server: it
imports ``ssl`` and ``email``, a third of this path's start-up); anything else (a
terminal, ``--help``, another verb) returns ``None`` and the full CLI takes over,
with the same output.

Example::

    >>> parse(["--server", "http://h:1", "list", "def", "--json"])
    ListQuery(server='http://h:1', kind='def', as_json=True, all_users=False)
"""

from __future__ import annotations

import json
import sys
from typing import NamedTuple
from urllib.parse import urlencode, urlsplit

from hpcstack.client.config import API, auth_headers, load_config
from hpcstack.errors import UserError
from hpcstack.files import human_size

COLUMNS = ("name", "kind", "state", "size", "source", "created")


class ListQuery(NamedTuple):
    server: str | None = None
    kind: str | None = None
    as_json: bool = False
    all_users: bool = False


def parse(argv: list[str]) -> ListQuery | None:
    """The list query ``argv`` asks for, or None when it is anything else."""
    words, server = list(argv), None
    while words and (words[0] in ("--server", "-s") or words[0].startswith("--server=")):
        flag = words.pop(0)
        if "=" in flag:
            server = flag.split("=", 1)[1]
        elif words:
            server = words.pop(0)
        else:
            return None
    if not words or words.pop(0) != "list":
        return None
    kind, as_json, all_users = None, False, False
    for word in words:
        if word in ("def", "img") and kind is None:
            kind = word
        elif word == "--json":
            as_json = True
        elif word == "--all":
            all_users = True
        else:
            return None
    return ListQuery(server, kind, as_json, all_users)


def human(size: int | None) -> str:
    """``1.5 MiB``: sizes as the list shows them."""
    return "-" if size is None else human_size(size)


def table_rows(rows: list[dict], all_users: bool) -> list[tuple[str, ...]]:
    """The list's cells, as both the plain and the Rich table show them."""
    return [(r["name"], r["kind"], r["state"], human(r.get("size")), r["source"],
             r["created"][:19].replace("T", " "), *([r["owner"]] if all_users else []))
            for r in rows]


def plain_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *rows)]
    return "\n".join(lines) + "\n"


def fetch_list(query: ListQuery) -> list[dict]:
    """GET /containers with this user's credential; the service's one-line error on failure."""
    config = load_config(query.server)
    url = urlsplit(config.server)
    params = {k: v for k, v in (("kind", query.kind),
                                ("all", "true" if query.all_users else None)) if v}
    path = f"{url.path.rstrip('/')}{API}/containers" + (f"?{urlencode(params)}" if params else "")
    headers = auth_headers(config)
    try:
        if url.scheme == "https":
            status, reason, body = _get_https(url.hostname, url.port, path, headers)
        else:
            status, reason, body = _get(url.hostname or "127.0.0.1", url.port or 80, path,
                                        headers)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot reach the build service at {config.server}: {err}") from None
    if status >= 400:
        try:
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if not isinstance(detail, str):
            detail = f"the build service answered {status} {reason}"
        raise UserError(detail)
    return json.loads(body)["containers"]


def _get(host: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """One HTTP/1.0 GET: the server answers with a plain body and closes the connection."""
    import socket

    lines = [f"GET {path} HTTP/1.0", f"Host: {host}:{port}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall("\r\n".join(lines).encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise ValueError("not an HTTP answer")
    return int(status_line[1]), (status_line[2] if len(status_line) > 2 else ""), body


def _get_https(host: str | None, port: int | None, path: str,
               headers: dict[str, str]) -> tuple[int, str, bytes]:
    import http.client

    conn = http.client.HTTPSConnection(host or "127.0.0.1", port, timeout=60)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.reason, resp.read()


def main(argv: list[str]) -> int | None:
    """Answer a plain ``u2cb list`` for a pipe or a file; None: let the full CLI answer."""
    query = parse(argv)
    if query is None or (sys.stdout.isatty() and not query.as_json):
        return None
    try:
        rows = fetch_list(query)
    except UserError as exc:
        print(f"u2cb: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if query.as_json:
        print(json.dumps(rows, indent=2))
    else:
        header = COLUMNS + (("owner",) if query.all_users else ())
        sys.stdout.write(plain_table(header, table_rows(rows, query.all_users)))
    return 0
