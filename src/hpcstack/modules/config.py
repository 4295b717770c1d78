"""The site modules file: one YAML document, validated, errors naming the field.

Example (``examples/modules/site.yaml``)::

    root: /opt/hpcstack/modules          # modulefiles, wrappers, images, state
    module_system: both                  # lmod | tcl | both
    runtime: charliecloud                # charliecloud | apptainer | singularity
    binds: [/lustre]                     # bound into every container
    launchers: [pmi2, pmix, mpirun]      # what MPI job scripts may use (modules check --mpi)
    usage_log: /var/log/hpcstack/usage.log   # each wrapper call appends a record (modules usage)
    apps:
      - name: gromacs
        version: 2022-cpu
        image: gromacs.sif               # relative to this file
        commands: [gmx, gmx_mpi]         # or "discover" (the default)
        mpi: openmpi
        state: default                   # enabled | disabled | default

Pure: :func:`parse_site` takes text and gives a :class:`Site` or raises
:class:`~hpcstack.errors.UserError` ``FILE: apps[0].gpu: message``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpcstack import yamlfile
from hpcstack.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
COMMAND = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Where commands are looked for when an app says ``commands: discover`` and the image
#: has no ``hpcstack.commands`` label (globs over the image's paths).
DEFAULT_DISCOVER = ["/usr/local/bin/*", "/opt/*/bin/*"]
#: Where the catalog's Debian bases and the example images put their 2-rank MPI hello.
DEFAULT_MPI_HELLO = "/usr/libexec/hpcstack/mpi-hello"
#: The wrapper deploy writes, next to an MPI app's commands, that runs that hello.
HELLO_COMMAND = "hpcstack-mpi-hello"

#: How a job script may start MPI ranks: ``srun --mpi=pmi2``, ``srun --mpi=pmix``, ``mpirun``.
Launcher = Literal["pmi2", "pmix", "mpirun"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_binds(binds: list[str]) -> list[str]:
    for spec in binds:
        parts = spec.split(":")
        if not spec or len(parts) > 3 or not all(p.startswith("/") for p in parts[:2]):
            raise ValueError(f"{spec!r}: expected /SRC[:/DST[:ro|rw]] with absolute paths")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise ValueError(f"{spec!r}: option must be 'ro' or 'rw'")
    return binds


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
    return env


class App(_Strict):
    """One deployed application: a module ``name/version`` backed by an image."""

    name: str = Field(description="module name, e.g. gromacs")
    version: str = Field(description="module version, e.g. 2022-cpu")
    image: str = Field(description="a SIF file (relative to the site file)")
    commands: list[str] | Literal["discover"] = "discover"
    discover: list[str] | None = Field(None, description="globs in the image for discovery")
    gpu: Literal["nvidia", "amd"] | None = None
    binds: list[str] = []
    env: dict[str, str] = {}
    mpi: Literal["none", "openmpi", "mpich"] = "none"
    description: str | None = None
    help: str | None = None
    state: Literal["enabled", "disabled", "default"] = "enabled"
    shell_functions: bool | None = None
    mpi_hello: str = Field(DEFAULT_MPI_HELLO, description="an MPI hello in the image, printing "
                           "'hello from rank R of N' (modules check --mpi runs it)")

    @field_validator("mpi_hello")
    @classmethod
    def _hello(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r}: an absolute path in the image")
        return value

    @field_validator("name", "version")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: letters, digits and . _ + - only")
        return value

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("empty: list commands or say 'discover'")
            for cmd in value:
                if not COMMAND.match(cmd):
                    raise ValueError(f"{cmd!r} is not a command name")
            if len(set(value)) != len(value):
                raise ValueError("a command is listed twice")
        return value

    @field_validator("discover")
    @classmethod
    def _globs(cls, value: list[str] | None) -> list[str] | None:
        for glob in value or []:
            if not glob.startswith("/"):
                raise ValueError(f"{glob!r}: a glob over absolute paths in the image")
        return value

    _binds = field_validator("binds")(classmethod(lambda cls, v: _check_binds(v)))
    _env = field_validator("env")(classmethod(lambda cls, v: _check_env(v)))

    @property
    def module(self) -> str:
        return f"{self.name}/{self.version}"


class Site(_Strict):
    """The whole site file."""

    root: str = Field("/opt/hpcstack/modules", description="where everything is written")
    modulepath: str | None = Field(None, description="one folder for the Lua and Tcl "
                                   "modulefiles (default: ROOT/lmod and ROOT/tcl)")
    module_system: Literal["lmod", "tcl", "both"] = "both"
    runtime: Literal["charliecloud", "apptainer", "singularity"] = "charliecloud"
    runtime_path: str | None = Field(None, description="the runtime's binary (default: PATH)")
    home_root: str = Field("/home", description="parent of home directories (charliecloud)")
    binds: list[str] = []
    env: dict[str, str] = {}
    shell_functions: bool = False
    spider_cache: bool = False
    discover: list[str] = Field(default_factory=lambda: list(DEFAULT_DISCOVER))
    shadow_commands: list[str] = Field(default_factory=list, description="extra names to warn on")
    launchers: list[Launcher] = Field(
        default_factory=list, description="MPI launchers job scripts may use: pmi2 pmix mpirun")
    usage_log: str | None = Field(None, description="a log every wrapper call appends a usage "
                                  "record to (user, module, command, Slurm job, node, time); "
                                  "off when unset")
    require_signature: bool = Field(
        False, description="deploy only SIF images whose every object group is signed by one "
        "of trusted_keys (as hpcstack verify and apptainer verify check them)")
    trusted_keys: list[str] = Field(
        default_factory=list, description="OpenPGP public key files, keyrings or directories "
        "of them (relative to this file)")
    apps: list[App] = []

    _binds = field_validator("binds")(classmethod(lambda cls, v: _check_binds(v)))
    _env = field_validator("env")(classmethod(lambda cls, v: _check_env(v)))

    @field_validator("launchers")
    @classmethod
    def _launchers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a launcher is listed twice")
        return value

    @field_validator("root", "home_root", "modulepath")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return value  # made absolute against the site file by load_site

    @field_validator("usage_log")
    @classmethod
    def _log_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or
                                  re.search(r"[^A-Za-z0-9._/+-]", value)):
            raise ValueError(f"{value!r}: an absolute path of letters, digits and . _ / + -")
        return value

    def enabled(self) -> list[App]:
        return [a for a in self.apps if a.state != "disabled"]

    def check_names(self, where: str) -> None:
        """Two apps may not claim one module, and one name has at most one default."""
        seen: dict[str, int] = {}
        defaults: dict[str, str] = {}
        for i, app in enumerate(self.apps):
            if app.module in seen:
                raise UserError(
                    f"{where}: apps[{i}]: module {app.module} is already claimed by "
                    f"apps[{seen[app.module]}]"
                )
            seen[app.module] = i
            if app.state == "default":
                if app.name in defaults:
                    raise UserError(
                        f"{where}: apps[{i}].state: {app.name} already has a default "
                        f"({defaults[app.name]})"
                    )
                defaults[app.name] = app.module


class AppList(_Strict):
    """A file that lists apps only: a user's own modules (``u2cb module``)."""

    apps: list[App] = []


def parse_site(text: str, where: str = "site file", base: Path | None = None) -> Site:
    """Parse and validate a site file; relative paths are taken from ``base``."""
    site = yamlfile.parse(text, Site, where, empty_ok=True)
    site.check_names(where)
    if site.require_signature and not site.trusted_keys:
        raise UserError(f"{where}: trusted_keys: list the public keys that require_signature "
                        "trusts")
    if base is not None:
        site = resolve_paths(site, base)
    return site


def resolve_paths(site: Site, base: Path) -> Site:
    """``root``, images and keys made absolute against ``base`` (the site file's directory)."""

    def absolute(path: str) -> str:
        return str((base / path).resolve()) if not path.startswith("/") else path

    apps = [a.model_copy(update={"image": absolute(a.image)}) for a in site.apps]
    modulepath = absolute(site.modulepath) if site.modulepath else None
    keys = [absolute(k) for k in site.trusted_keys]
    return site.model_copy(update={"root": absolute(site.root), "modulepath": modulepath,
                                   "apps": apps, "trusted_keys": keys})


def load_site(path: Path) -> Site:
    return parse_site(yamlfile.read(path), str(path), path.resolve().parent)
