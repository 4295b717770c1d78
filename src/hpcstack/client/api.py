"""Talking to the service: where it is, who we are, and its one-line errors.

Every request carries a fresh MUNGE credential (``munge -n``), or an API token
when one is configured, so the service keeps no session.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from hpcstack.errors import UserError

DEFAULT_SERVER = "http://127.0.0.1:8473"
API = "/api/v1"
MUNGE_HEADER = "X-Munge-Credential"


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str | None = None
    munge_socket: str | None = None


def config_files() -> list[Path]:
    home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(home) / "u2cb" / "config.yaml", Path("/etc/u2cb/config.yaml")]


def load_config(server: str | None = None) -> ClientConfig:
    """``--server``, then ``U2CB_SERVER``, then the first config file, then the default."""
    data: dict = {}
    for path in config_files():
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise UserError(f"{path}: cannot read: {str(err).splitlines()[0]}") from None
            if not isinstance(data, dict):
                raise UserError(f"{path}: expected a mapping (server:, token:, munge_socket:)")
            break
    return ClientConfig(
        server=(server or os.environ.get("U2CB_SERVER") or data.get("server")
                or DEFAULT_SERVER).rstrip("/"),
        token=os.environ.get("U2CB_TOKEN") or data.get("token"),
        munge_socket=os.environ.get("U2CB_MUNGE_SOCKET") or data.get("munge_socket"))


def munge_credential(socket: str | None) -> str:
    argv = ["munge", "--no-input"]
    if socket:
        argv.append(f"--socket={socket}")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise UserError("munge not found: install munge, or set U2CB_TOKEN") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"munge: {last}")
    return proc.stdout.strip()


class Client:
    """A thin typed wrapper over the REST API; raises UserError with the server's detail."""

    def __init__(self, config: ClientConfig, timeout: float = 600) -> None:
        self.config = config
        self.http = httpx.Client(base_url=config.server + API, timeout=timeout)

    def auth_headers(self) -> dict[str, str]:
        if self.config.token:
            return {"Authorization": f"Bearer {self.config.token}"}
        return {MUNGE_HEADER: munge_credential(self.config.munge_socket)}

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
