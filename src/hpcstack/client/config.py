"""Where the service is and who we are: the client's settings and credentials.

Apart from :mod:`hpcstack.client.api` so the quick verbs (:mod:`.quick`) start
without importing an HTTP library they do not use.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

from hpcstack.errors import UserError

DEFAULT_SERVER = "http://127.0.0.1:8473"
API = "/api/v1"
MUNGE_HEADER = "X-Munge-Credential"


class ClientConfig(NamedTuple):
    """Where the service is and how to prove who we are (a token, else MUNGE)."""

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
            import yaml  # only when there is a file: `u2cb list` starts fast without

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
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1].removeprefix("munge: ")
        raise UserError(f"no MUNGE credential: {last}; `hpcstack doctor` checks munged, "
                        "or set U2CB_TOKEN")
    return proc.stdout.strip()


def auth_headers(config: ClientConfig) -> dict[str, str]:
    """The API token when configured, else a fresh MUNGE credential."""
    if config.token:
        return {"Authorization": f"Bearer {config.token}"}
    return {MUNGE_HEADER: munge_credential(config.munge_socket)}
