"""The service's settings: one model holding every default, and where each value came from.

``hpcstack serve`` with nothing else keeps its data in ``~/.local/share/u2cb``
(the service account's home) with SQLite in WAL mode and builds locally.

Each setting is taken from the first of these that gives it (later ones win):

1. the default in :class:`Settings` (the only place a default lives);
2. the settings file, ``/etc/hpcstack/u2cb.yaml`` (``--config FILE`` or
   ``$U2CB_CONFIG`` name another; a named file must exist);
3. the environment, ``U2CB_`` and the key in capitals (``U2CB_MAX_WORKERS=4``;
   lists comma-separated);
4. ``hpcstack serve``'s flags.

:func:`load` is pure apart from reading the file: tests hand it an environment and flags.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hpcstack.errors import UserError
from hpcstack.service.settings_text import MEANING

DEFAULT_FILE = Path("/etc/hpcstack/u2cb.yaml")
ENV_PREFIX = "U2CB_"
CONFIG_ENV = "U2CB_CONFIG"
ANYONE = "*"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "u2cb"


def default_instance(port: int | None = None) -> str:
    """This host's short name, and the port when given: unique among a site's services."""
    name = socket.gethostname().split(".")[0][:40]
    return f"{name}:{port}" if port else name


class Settings(BaseModel):
    """Every setting of ``hpcstack serve``, its default and its meaning."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description=MEANING["host"])
    port: int = Field(8473, ge=1, le=65535, description=MEANING["port"])
    data_dir: Path = Field(default_factory=default_data_dir,
                           description=MEANING["data_dir"])
    database_url: str | None = Field(None, description=MEANING["database_url"])
    munge_socket: str | None = Field(None, description=MEANING["munge_socket"])
    admin_users: list[str] = Field(["root"], description=MEANING["admin_users"])
    executor: Literal["local", "slurm"] = Field("local", description=MEANING["executor"])
    slurm_partition: str | None = Field(None, description=MEANING["slurm_partition"])
    max_workers: int = Field(2, ge=1, description=MEANING["max_workers"])
    max_builds_per_user: int = Field(1, ge=1, description=MEANING["max_builds_per_user"])
    build_time_limit: float = Field(3600.0, gt=0, description=MEANING["build_time_limit"])
    quota_bytes: int = Field(20 * 2**30, ge=0, description=MEANING["quota_bytes"])
    max_upload_bytes: int = Field(256 * 2**20, ge=1, description=MEANING["max_upload_bytes"])
    max_attempts: int = Field(2, ge=1, description=MEANING["max_attempts"])
    docker_cert_dir: str | None = Field(None, description=MEANING["docker_cert_dir"])
    build_network: bool = Field(True, description=MEANING["build_network"])
    build_loopback_ports: list[int] = Field([], description=MEANING["build_loopback_ports"])
    build_log_bytes: int = Field(16 * 2**20, ge=1024, description=MEANING["build_log_bytes"])
    session_idle_limit: float = Field(1800.0, gt=0, description=MEANING["session_idle_limit"])
    session_time_limit: float = Field(8 * 3600.0, gt=0, description=MEANING["session_time_limit"])
    instance: str | None = Field(None, max_length=48, pattern=r"^[A-Za-z0-9._:-]+$",
                                 description=MEANING["instance"])
    poll_interval: float = Field(0.5, gt=0, le=60, description=MEANING["poll_interval"])
    metrics_readers: list[str] = Field([ANYONE], description=MEANING["metrics_readers"])
    pid_file: Path | None = Field(None, description=MEANING["pid_file"])
    sign_key: Path | None = Field(None, description=MEANING["sign_key"])
    sign_key_fingerprint: str | None = Field(None, description=MEANING["sign_key_fingerprint"])
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description=MEANING["log_level"])

    @field_validator("admin_users")
    @classmethod
    def _root_is_admin(cls, value: list[str]) -> list[str]:
        return value if "root" in value else ["root", *value]

    @field_validator("sign_key")
    @classmethod
    def _key_path(cls, value: Path | None) -> Path | None:
        return value.resolve() if value is not None else None

    @model_validator(mode="after")
    def _named(self) -> Settings:
        if self.instance is None:
            self.instance = default_instance(self.port)
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'u2cb.db'}"

    @property
    def pid_path(self) -> Path:
        safe = (self.instance or "").replace(":", "_")
        return self.pid_file or self.data_dir / f"serve-{safe}.pid"

    def containers_dir(self) -> Path:
        return self.data_dir / "containers"

    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def cache_dir(self, uid: int) -> Path:
        """Each user's own build cache: one user's build can never feed another's."""
        return self.data_dir / "cache" / str(uid)


LISTS = {name for name, f in Settings.model_fields.items() if "list" in str(f.annotation)}


@dataclass
class Loaded:
    """The effective settings and, per key, where its value came from."""

    settings: Settings
    origin: dict[str, str]
    file: Path
    file_read: bool

    def render(self) -> str:
        """YAML a settings file could hold, each line saying its source."""
        state = "read" if self.file_read else "absent"
        lines = [f"# settings file: {self.file} ({state}); later sources win: default < "
                 f"file < ${ENV_PREFIX}KEY < flag"]
        values = self.settings.model_dump(mode="json")
        for key in Settings.model_fields:
            shown = yaml.safe_dump(values[key], default_flow_style=True, width=1000)
            shown = shown.removesuffix("\n...\n").strip()
            lines.append(f"{key}: {shown}".ljust(48) + f"  # {self.origin[key]}")
        return "\n".join(lines) + "\n"


def env_var(key: str) -> str:
    return ENV_PREFIX + key.upper()


def config_file(flag: Path | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The settings file and whether it was named (a named one must exist)."""
    if flag is not None:
        return flag, True
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), True
    return DEFAULT_FILE, False


def read_file(path: Path, named: bool) -> tuple[dict[str, Any], dict[str, int], bool]:
    """The file's top-level mapping, each key's line, and whether it was there."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if named:
            raise UserError(f"{path}: no such settings file") from None
        return {}, {}, False
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML: "
                        f"{getattr(err, 'problem', None) or err}") from None
    if data is None:
        return {}, {}, True
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}:1: expected a mapping of settings (key: value)")
    lines = {str(k.value): k.start_mark.line + 1 for k, _v in node.value}
    for key in data:
        if key not in Settings.model_fields:
            raise UserError(f"{path}:{lines.get(str(key), 1)}: {key}: unknown setting"
                            f"{suggestion(str(key))}")
    return data, lines, True


def suggestion(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(Settings.model_fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``U2CB_KEY`` values; lists are comma-separated, an empty value is unset."""
    found: dict[str, Any] = {}
    for key in Settings.model_fields:
        raw = environ.get(env_var(key), "")
        if raw == "":
            continue
        found[key] = [p.strip() for p in raw.split(",") if p.strip()] if key in LISTS else raw
    return found


def load(*, config: Path | None = None, environ: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None,
         flag_names: Mapping[str, str] | None = None) -> Loaded:
    """Defaults < file < environment < flags (``None`` flags are not given).

    A wrong key or value raises :class:`UserError`: one line naming the field and
    where it was given (``FILE:LINE``, ``$U2CB_KEY`` or ``--flag``).
    """
    env = os.environ if environ is None else environ
    names = flag_names or {}
    path, named = config_file(config, env)
    from_file, lines, read = read_file(path, named)
    origin = {key: "default" for key in Settings.model_fields}
    merged: dict[str, Any] = {}
    for key, value in from_file.items():
        merged[key], origin[key] = value, f"{path}:{lines.get(key, 1)}"
    for key, value in from_env(env).items():
        merged[key], origin[key] = value, f"${env_var(key)}"
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key], origin[key] = value, names.get(key, f"--{key.replace('_', '-')}")
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        where = origin.get(key, str(path))
        raise UserError(f"{where}: {key}: {first['msg']}" if key else
                        f"{where}: {first['msg']}") from None
    return Loaded(settings, origin, path, read)
