"""The catalog file: base and application images, one YAML document.

Pure: :func:`parse_catalog` takes text and gives a :class:`Catalog`, or raises
:class:`~hpcstack.errors.UserError` naming the field
(``catalog.yaml: apps[2].cpu_target: unknown target 'skylake-avx'``).
Cross-references (bases, targets, tags) are checked by :mod:`.expand`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcstack import yamlfile

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
ARCHES = ("x86_64", "aarch64", "ppc64le")
Arch = Literal["x86_64", "aarch64", "ppc64le"]
#: Debian releases the Debian flavour knows (the suite for ``Bootstrap: debootstrap``).
DEBIAN_SUITES = {"debian11": "bullseye", "debian12": "bookworm", "debian13": "trixie"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"{value!r}: letters, digits and . _ + - only")
    return value


def _one_line(value: object) -> object:
    """Values that become one recipe line (a RUN, an ENV, a package): no line breaks.

    A Dockerfile cannot hold a line break in a value, and a definition's
    sections are line by line; only ``description`` may span lines (its
    label is folded into one, ``%help`` keeps them).
    """
    items = value.values() if isinstance(value, dict) else (
        value if isinstance(value, list) else [value])
    for item in items:
        if isinstance(item, str) and any(c in item for c in "\n\r\0"):
            raise ValueError(f"{item!r}: a line break has no place here (one line per item)")
    return value


def _as_list(value: object) -> object:
    """A single value where a list is expected is a list of one (``cpu_target: zen3``)."""
    return [value] if isinstance(value, str) else value


class Compiler(_Strict):
    name: Literal["gnu", "llvm"] = "gnu"
    version: str = Field("", description="major version, e.g. 12 (empty: the distro's)")


class MPI(_Strict):
    name: Literal["openmpi", "mpich"] = "openmpi"
    version: str = Field(description="e.g. 4.1.6")
    pmi: list[Literal["pmix", "pmi2"]] = Field(
        default_factory=lambda: ["pmix"], description="Slurm launch interfaces to build in")


class Base(_Strict):
    """A base image: OS, compiler, MPI, CUDA and interconnect, for some architectures."""

    name: str = Field(description="how apps and other bases refer to it")
    flavour: Literal["hpccm", "debian"] = "hpccm"
    os: str = Field("ubuntu22.04", description="ubuntu22.04, rockylinux9, debian12 ...")
    arch: list[Arch] = Field(default_factory=lambda: ["x86_64"])
    image: str | dict[str, str] | None = Field(None, description="build-stage image (per arch)")
    runtime_image: str | dict[str, str] | None = Field(
        None, description="image under the slim runtime stage of apps (per arch)")
    base: str | None = Field(None, description="another base this one is built on")
    compiler: Compiler | None = Field(default_factory=Compiler)
    mpi: MPI | None = None
    cuda: str | None = Field(None, description="CUDA version, e.g. 12.4.1")
    interconnect: Literal["none", "mlnx_ofed", "ofed", "opa"] = "none"
    ofed: str | None = Field(None, description="Mellanox OFED version")
    ucx: str | None = None
    gdrcopy: str | None = None
    packages: list[str] = []
    runtime_packages: list[str] = []
    suffix: str | None = Field(None, description="appended to the tag, e.g. ml")

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))
    _a = field_validator("arch", mode="before")(classmethod(lambda cls, v: _as_list(v)))
    _l = field_validator("packages", "runtime_packages", "image", "runtime_image")(
        classmethod(lambda cls, v: _one_line(v)))

    @field_validator("os")
    @classmethod
    def _os(cls, value: str) -> str:
        if not re.fullmatch(r"(ubuntu|debian|rockylinux|centos|rhel)\d+(\.\d+)?", value):
            raise ValueError(f"{value!r}: expected e.g. ubuntu22.04, debian12, rockylinux9")
        return value

    @model_validator(mode="after")
    def _debian_openmpi_pmi2(self) -> Base:
        """Debian 13's Open MPI 5 has no PMI-2 client to build in (its ``pmix`` framework,
        where the ``s2`` component lived, is gone): it starts under PMIx only."""
        release = re.fullmatch(r"debian(\d+)", self.os)
        if (self.flavour == "debian" and release and int(release.group(1)) >= 13
                and self.mpi and self.mpi.name == "openmpi" and "pmi2" in self.mpi.pmi):
            raise ValueError(f"mpi.pmi: {self.os}'s Open MPI 5 has no PMI-2 client; "
                             "use pmi: [pmix] (srun --mpi=pmix)")
        return self


class Variant(_Strict):
    """One row of an app's matrix; unset fields come from the app."""

    base: str | None = None
    cpu_target: list[str] | None = None
    gpu_arch: list[str] | None = None

    _t = field_validator("cpu_target", "gpu_arch", mode="before")(
        classmethod(lambda cls, v: _as_list(v)))


class App(_Strict):
    """An application image: built on a base, once per CPU target (x GPU arch)."""

    name: str
    version: str
    base: str | None = Field(None, description="the base image's name")
    cpu_target: list[str] = Field(default_factory=list, description="archspec names")
    gpu_arch: list[str] = Field(default_factory=list, description="sm_70, sm_80 ...")
    variants: list[Variant] = Field(default_factory=list, description="extra matrix rows")
    description: str = ""
    packages: list[str] = Field(default_factory=list, description="build-stage OS packages")
    runtime_packages: list[str] = Field(default_factory=list, description="runtime OS packages")
    source: str | None = Field(None, description="tarball URL (hpccm generic_cmake/autotools)")
    source_dir: str | None = Field(None, description="where the sources unpack (if unusual)")
    cmake_opts: list[str] | None = None
    configure_opts: list[str] | None = None
    build: list[str] = Field(default_factory=list, description="build-stage shell lines")
    prefix: str | None = Field(None, description="install prefix (default /opt/NAME)")
    keep: list[str] = Field(default_factory=list, description="more build-stage paths to keep")
    multistage: bool = True
    files: dict[str, str] = Field(default_factory=dict, description="path: content, in build")
    env: dict[str, str] = {}
    commands: list[str] = Field(default_factory=list, description="exposed to modules")
    tests: list[str] = Field(default_factory=list, description="shell lines run in the image")
    mpi: Literal["none", "openmpi", "mpich"] | None = Field(
        None, description="the modules' MPI model (default: the base's MPI)")

    _n = field_validator("name", "version")(classmethod(lambda cls, v: _name(v)))
    _t = field_validator("cpu_target", "gpu_arch", mode="before")(
        classmethod(lambda cls, v: _as_list(v)))
    _l = field_validator("packages", "runtime_packages", "source", "source_dir", "cmake_opts",
                         "configure_opts", "build", "prefix", "keep", "env", "commands",
                         "tests")(classmethod(lambda cls, v: _one_line(v)))


class Catalog(_Strict):
    """The whole catalog."""

    registry: str = Field("localhost/hpcstack", description="where Dockerfiles' bases live")
    bases: list[Base] = []
    apps: list[App] = []


def parse_catalog(text: str, where: str = "catalog.yaml") -> Catalog:
    """Parse and validate a catalog's text; the first problem as one line."""
    return yamlfile.parse(text, Catalog, where)


def load_catalog(path: Path) -> Catalog:
    return parse_catalog(yamlfile.read(path), path.name)
