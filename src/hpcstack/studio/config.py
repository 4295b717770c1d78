"""The studio file: the portal apps a site offers, validated, errors naming the field.

Example (``examples/studio/studio.yaml``)::

    cluster: hpc                       # the OOD cluster id (clusters.d/hpc.yml)
    runtime: apptainer                 # charliecloud | apptainer | singularity
    modules: ../modules/site.yaml      # the modules site file, for `module:` references
    partitions: [cpu, gpu]
    apps:
      - name: jupyter
        kind: jupyter
        image: /opt/images/jupyter.sif # or module: jupyter/6.4 (its image, from the site file)
      - name: grace
        kind: desktop                  # runs on the studio's desktop image (desktop:)
        image: /opt/images/grace.sif   # the app's own image, or module: grace/5.1
        command: xmgrace

Pure apart from :func:`load_studio` (reads the file and the modules site file it names).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcstack import yamlfile
from hpcstack.errors import UserError
from hpcstack.modules.config import Site, load_site

KINDS = ("jupyter", "vscode", "tensorboard", "rstudio", "desktop")
#: Kinds whose server is the app itself (desktop apps are served by the desktop image).
WEB_KINDS = ("jupyter", "vscode", "tensorboard", "rstudio")
NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
#: Characters an image path, bind or command may use: they go into shell scripts and ERB.
SAFE = re.compile(r"[A-Za-z0-9_./+:@%=-]+\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _safe(value: str) -> str:
    if not SAFE.match(value):
        raise ValueError(f"{value!r}: letters, digits and _ . / + : @ % = - only")
    return value


class Preset(_Strict):
    """An instance size offered in the form, and the Slurm arguments it stands for."""

    id: str = Field(description="the form value, e.g. gpu-4")
    label: str
    cores: int = Field(1, ge=1)
    gpus: int = Field(0, ge=0)
    exclusive: bool = False
    partition: str | None = Field(None, description="overrides the partition the user chose")

    _id = field_validator("id")(classmethod(lambda cls, v: _name(v)))

    def slurm_args(self) -> list[str]:
        """The ``sbatch`` arguments for this size (the partition and hours come from the form)."""
        args = ["--nodes=1", "--ntasks=1", f"--cpus-per-task={self.cores}"]
        if self.gpus:
            args.append(f"--gres=gpu:{self.gpus}")
        if self.exclusive:
            args.append("--exclusive")
        return args


def _name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r}: lower-case letters, digits, _ and - only")
    return value


DEFAULT_PRESETS = [
    Preset(id="cpu-1", label="1 core", cores=1),
    Preset(id="cpu-10", label="10 cores", cores=10),
    Preset(id="cpu-40", label="40 cores (whole node)", cores=40, exclusive=True),
    Preset(id="gpu-1", label="1 GPU", cores=4, gpus=1),
    Preset(id="gpu-4", label="4 GPUs", cores=16, gpus=4),
    Preset(id="gpu-8", label="8 GPUs (whole node)", cores=32, gpus=8, exclusive=True),
]


class StudioApp(_Strict):
    """One portal app: its kind, and the image or module it runs from."""

    name: str = Field(description="the app directory name, e.g. jupyter")
    kind: Literal["jupyter", "vscode", "tensorboard", "rstudio", "desktop"]
    title: str | None = None
    description: str | None = None
    image: str | None = Field(None, description="a SIF file (relative to the studio file)")
    module: str | None = Field(None, description="NAME/VERSION from the modules site file")
    command: str | None = Field(None, description="desktop: the program to start, and its "
                                "arguments (words split at spaces)")
    binds: list[str] = []
    gpu: Literal["nvidia", "amd"] | None = None
    presets: list[str] | None = Field(None, description="preset ids offered (default: all)")

    _name = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    @field_validator("image", "module")
    @classmethod
    def _safe_text(cls, value: str | None) -> str | None:
        return None if value is None else _safe(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.split():
                raise ValueError("empty command")
            for word in value.split():
                _safe(word)
        return value

    @field_validator("binds")
    @classmethod
    def _binds(cls, value: list[str]) -> list[str]:
        for spec in value:
            _safe(spec)
            if not spec.startswith("/"):
                raise ValueError(f"{spec!r}: expected /SRC[:/DST[:ro]]")
        return value

    @model_validator(mode="after")
    def _source(self) -> StudioApp:
        if (self.image is None) == (self.module is None):
            raise ValueError("give exactly one of image or module")
        if self.kind == "desktop" and not self.command:
            raise ValueError("a desktop app needs command (the program its module provides)")
        return self

    @property
    def web(self) -> bool:
        return self.kind in WEB_KINDS


class U2cbBase(_Strict):
    """A base image the U2CB page offers (the catalog's published images, as pulled)."""

    label: str
    ref: str = Field(description="docker://REF or debootstrap://SUITE")

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        from hpcstack.service.models import base_problem

        if problem := base_problem(value, "ref"):
            raise ValueError(problem)
        return value


class U2cbPortal(_Strict):
    """The U2CB page: a Passenger app (``app.js``) that runs as the logged-in user."""

    name: str = "u2cb"
    title: str = "Container builds (U2CB)"
    description: str = ("Build your own container images without root: from a base image, "
                        "with packages, or from a definition file; a root shell in a sandbox.")
    category: str = "Files"
    subcategory: str = "Containers"
    server: str | None = Field(None, description="the U2CB service (default: as u2cb finds it)")
    python: str | None = Field(None, description="hpcstack's Python on the portal host "
                               "(default: the one running generate)")
    max_upload: int | None = Field(None, ge=1, description="bytes the page sends at most")
    bases: list[U2cbBase] = []

    _name = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        return None if value is None else _safe(value)


class Studio(_Strict):
    """The whole studio file."""

    cluster: str = Field(description="the OOD cluster id")
    runtime: Literal["charliecloud", "apptainer", "singularity"] = "apptainer"
    hpcstack: str = Field("hpcstack", description="the hpcstack command on compute nodes")
    modules: str | None = Field(None, description="the modules site file")
    module_init: str = Field("/usr/share/lmod/lmod/init/bash", description="sourced before "
                             "`module load` when the job shell has no `module`")
    category: str = "Interactive Apps"
    subcategory: str = "Containers"
    partitions: list[str] = Field(min_length=1)
    max_hours: int = Field(72, ge=1)
    presets: list[Preset] = Field(default_factory=lambda: list(DEFAULT_PRESETS), min_length=1)
    working_dir_root: str = Field("", description="where the file picker starts (default: home)")
    binds: list[str] = []
    desktop: str | None = Field(None, description="desktop apps: the image with the VNC "
                                "server, noVNC and the desktop session (examples/studio/"
                                "desktop.def)")
    desktop_session: str = Field("startxfce4", description="desktop apps: the session the "
                                 "desktop image starts on its display")
    geometry: str = Field("1280x800", pattern=r"^[1-9][0-9]{2,4}x[1-9][0-9]{2,4}$",
                          description="desktop apps: the display's size")
    apps: list[StudioApp] = []
    u2cb: U2cbPortal | None = Field(None, description="the U2CB page (a Passenger app)")

    _cluster = field_validator("cluster")(classmethod(lambda cls, v: _name(v)))

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, value: list[str]) -> list[str]:
        return [_safe(p) for p in value]

    @field_validator("hpcstack", "module_init", "working_dir_root", "desktop_session")
    @classmethod
    def _paths(cls, value: str) -> str:
        return value if value == "" else _safe(value)

    @field_validator("desktop")
    @classmethod
    def _desktop(cls, value: str | None) -> str | None:
        return None if value is None else _safe(value)

    @model_validator(mode="after")
    def _unique(self) -> Studio:
        ids = [p.id for p in self.presets]
        if len(set(ids)) != len(ids):
            raise ValueError("presets: an id is listed twice")
        names = [a.name for a in self.apps] + ([self.u2cb.name] if self.u2cb else [])
        if len(set(names)) != len(names):
            raise ValueError("apps: a name is listed twice")
        if self.desktop is None and any(a.kind == "desktop" for a in self.apps):
            raise ValueError("desktop: desktop apps need the desktop image (a VNC server, "
                             "noVNC and a desktop session; see examples/studio/desktop.def)")
        for app in self.apps:
            unknown = set(app.presets or []) - set(ids)
            if unknown:
                raise ValueError(f"apps: {app.name}: unknown preset {sorted(unknown)[0]!r}")
        return self

    def app_presets(self, app: StudioApp) -> list[Preset]:
        return [p for p in self.presets if app.presets is None or p.id in app.presets]


def parse_studio(text: str, where: str = "studio file") -> Studio:
    """Parse and validate a studio file (``FILE: apps[0].kind: message`` on error)."""
    return yamlfile.parse(text, Studio, where)


def load_studio(path: Path) -> tuple[Studio, Site | None]:
    """The studio file with relative paths made absolute, and the modules site it names."""
    studio = parse_studio(yamlfile.read(path), str(path))
    base = path.resolve().parent
    studio = _absolute(studio, base)
    site = load_site(Path(studio.modules)) if studio.modules else None
    _check_modules(studio, site, str(path))
    return studio, site


def _absolute(studio: Studio, base: Path) -> Studio:
    def absolute(p: str | None) -> str | None:
        return p if p is None or p.startswith("/") else str((base / p).resolve())

    apps = [a.model_copy(update={"image": absolute(a.image)}) for a in studio.apps]
    return studio.model_copy(update={"apps": apps, "modules": absolute(studio.modules),
                                     "desktop": absolute(studio.desktop)})


def _check_modules(studio: Studio, site: Site | None, where: str) -> None:
    """Every ``module:`` must name an app of the modules site file."""
    for i, app in enumerate(studio.apps):
        if app.module is None:
            continue
        if site is None:
            raise UserError(f"{where}: apps[{i}].module: no modules site file (set modules:)")
        if not any(m.module == app.module and m.state != "disabled" for m in site.apps):
            raise UserError(f"{where}: apps[{i}].module: {app.module} is not an enabled app "
                            f"of {studio.modules}")
