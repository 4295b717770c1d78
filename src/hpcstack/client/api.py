"""Talking to the service over HTTP, and its one-line errors.

Every request carries a fresh MUNGE credential (``munge -n``), or an API token
when one is configured, so the service keeps no session.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx

from hpcstack.client.config import API, ClientConfig, auth_headers
from hpcstack.errors import UserError


class Client:
    """A thin typed wrapper over the REST API; raises UserError with the server's detail."""

    def __init__(self, config: ClientConfig, timeout: float = 600) -> None:
        self.config = config
        self.http = httpx.Client(base_url=config.server + API, timeout=timeout)

    def auth_headers(self) -> dict[str, str]:
        return auth_headers(self.config)

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **self.auth_headers()}
        try:
            resp = self.http.request(method, path, headers=headers, **kw)
        except httpx.TransportError as err:
            raise UserError(f"cannot reach the build service at {self.config.server}: "
                            f"{err}") from None
        check(resp)
        return resp

    def stream(self, path: str, headers: dict[str, str]):
        return self.http.stream("GET", path, headers={**headers, **self.auth_headers()})

    def ws_url(self, path: str) -> str:
        base = self.config.server
        return ("wss" + base[5:] if base.startswith("https") else "ws" + base[4:]) + API + path

    # --- verbs -------------------------------------------------------------------------

    def list(self, kind: str | None = None, all_users: bool = False) -> list[dict]:
        params: dict = {"kind": kind} if kind else {}
        if all_users:
            params["all"] = "true"
        return self.request("GET", "/containers", params=params).json()["containers"]

    def create(self, name: str, base: str) -> dict:
        return self.request("POST", "/containers", json={"name": name, "base": base}).json()

    def defcreate(self, name: str, filename: str, definition: bytes,
                  uploads: list[tuple[str, Path]]) -> dict:
        """Send the definition and its uploads; the files are streamed, not read whole."""
        with contextlib.ExitStack() as stack:
            files = [("definition", (filename, definition, "text/plain"))]
            for rel, path in uploads:
                try:
                    fh = stack.enter_context(path.open("rb"))
                except OSError as exc:
                    raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
                files.append(("files", (rel, fh, "application/octet-stream")))
            data = {"name": name, "paths": [rel for rel, _ in uploads]}
            return self.request("POST", "/containers/def", data=data, files=files).json()

    def status(self, name: str) -> dict:
        return self.request("GET", f"/containers/{name}").json()

    def delete(self, name: str) -> None:
        self.request("DELETE", f"/containers/{name}")

    def cancel(self, name: str) -> dict:
        return self.request("POST", f"/containers/{name}/cancel").json()

    def log(self, name: str, offset: int = 0) -> dict:
        return self.request("GET", f"/containers/{name}/log", params={"offset": offset}).json()

    def pack(self, name: str) -> dict:
        return self.request("POST", f"/containers/{name}/pack").json()

    def issue_token(self, user: str, admin: bool) -> dict:
        return self.request("POST", "/tokens", json={"user": user, "admin": admin}).json()

    def tokens(self) -> list[dict]:
        return self.request("GET", "/tokens").json()["tokens"]

    def revoke_token(self, token_id: str) -> None:
        self.request("DELETE", f"/tokens/{token_id}")


def check(resp: httpx.Response) -> None:
    """Turn an error response into a one-line UserError with the server's own words."""
    if resp.status_code < 400:
        return
    try:
        resp.read()
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        detail = f"the build service answered {resp.status_code} {resp.reason_phrase}"
    raise UserError(detail)
