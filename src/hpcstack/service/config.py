"""The service's settings: defaults that work with no setup, overridden by flags or env.

``hpcstack serve`` with nothing else keeps its data in ``~/.local/share/u2cb``
(the service account's home) with SQLite in WAL mode and builds locally.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "u2cb"


def default_instance(port: int | None = None) -> str:
    """This host's short name, and the port when given: unique among a site's services."""
    name = socket.gethostname().split(".")[0][:40]
    return f"{name}:{port}" if port else name


class Settings(BaseModel):
    data_dir: Path
    instance: str = Field(default_factory=default_instance, max_length=48,
                          pattern=r"^[A-Za-z0-9._:-]+$")
    database_url: str | None = None
    munge_socket: str | None = None
    admin_users: list[str] = ["root"]
    executor: str = "local"
    max_workers: int = 2
    max_builds_per_user: int = 1
    build_time_limit: float = 3600.0
    quota_bytes: int = 20 * 2**30
    max_upload_bytes: int = 256 * 2**20
    max_attempts: int = 2
    docker_cert_dir: str | None = None
    slurm_partition: str | None = None
    poll_interval: float = 0.5
    build_network: bool = True  # pasta's user-mode network for builds and sessions; or none
    build_loopback_ports: list[int] = []  # host loopback TCP ports builds may reach
    build_log_bytes: int = 16 * 2**20  # a build's log is cut here, with a marker
    session_idle_limit: float = 1800.0  # a connect session without input this long ends
    session_time_limit: float = 8 * 3600.0  # and any session after this long
    sign_key: Path | None = None  # the site's OpenPGP secret key: each built image is signed
    sign_key_fingerprint: str | None = None  # which key, when the file holds several

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'u2cb.db'}"

    def containers_dir(self) -> Path:
        return self.data_dir / "containers"

    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def cache_dir(self, uid: int) -> Path:
        """Each user's own build cache: one user's build can never feed another's."""
        return self.data_dir / "cache" / str(uid)
