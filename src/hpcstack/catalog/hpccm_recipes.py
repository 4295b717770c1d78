"""From-source recipes with NVIDIA's HPC Container Maker (hpccm) building blocks.

A base is one stage: its OS image plus the blocks its fields ask for (gnu,
mlnx_ofed, gdrcopy, ucx, slurm_pmi2, openmpi/mpich).  An app is two stages:
``build`` (the base image, the app built with archspec's flags for its CPU
target and its ``sm_XX``), then a slim runtime stage on the base's runtime
image holding what the base's blocks' ``runtime()`` copy out plus the app's
prefix.  hpccm keeps its output format in module globals, so every render
sets them first.  Pure (no I/O).
"""

from __future__ import annotations

import re

import hpccm
from hpccm.building_blocks import (
    gdrcopy,
    generic_autotools,
    generic_cmake,
    gnu,
    llvm,
    mlnx_ofed,
    mpich,
    ofed,
    openmpi,
    packages,
    slurm_pmi2,
    ucx,
)
from hpccm.primitives import baseimage, copy, environment, label, raw, shell
from hpccm.toolchain import toolchain

from hpcstack.catalog import dockerfile
from hpcstack.catalog.expand import AppImage, BaseImage

SLURM_PMI2 = "/usr/local/slurm-pmi2"
UCX = "/usr/local/ucx"
FORMATS = {"def": "singularity", "docker": "docker"}


def _distro(os: str) -> str:
    """hpccm's distro name for an OS (``ubuntu22.04`` -> ``ubuntu22``)."""
    match = re.fullmatch(r"([a-z]+)(\d+)(?:\.\d+)?", os)
    return f"{match.group(1)}{match.group(2)}" if match else os


def _os_image(os: str, arch: str) -> str:
    match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", os)
    name, version = (match.group(1), match.group(2)) if match else (os, "latest")
    prefix = {"aarch64": "arm64v8/", "ppc64le": "ppc64le/"}.get(arch, "")
    return f"{prefix}{name}:{version}"


def pick(value: str | dict[str, str] | None, arch: str) -> str | None:
    return value.get(arch) if isinstance(value, dict) else value


def build_image(base: BaseImage) -> str:
    """The image a base's own stage starts from (its OS or CUDA devel image)."""
    spec = base.spec
    default = (f"nvcr.io/nvidia/cuda:{spec.cuda}-devel-{spec.os}" if spec.cuda
               else _os_image(spec.os, base.arch))
    return pick(spec.image, base.arch) or default


def runtime_image(base: BaseImage) -> str:
    """The image under an app's slim runtime stage."""
    spec = base.spec
    default = (f"nvcr.io/nvidia/cuda:{spec.cuda}-runtime-{spec.os}" if spec.cuda
               else _os_image(spec.os, base.arch))
    return pick(spec.runtime_image, base.arch) or default


def _from(image: str, fmt: str, base: BaseImage, stage: str | None,
          local: str | None = None) -> baseimage:
    """A baseimage primitive; ``local`` is a SIF path for .def files built on our bases."""
    kw = {"_arch": base.arch, "_distro": _distro(base.spec.os)}
    if stage:
        kw["_as"] = stage
    if fmt == "def" and local:
        return baseimage(image=local, _bootstrap="localimage", _docker_env=False, **kw)
    return baseimage(image=image, **kw)


# --- bases ------------------------------------------------------------------------------


def _mpi_block(base: BaseImage, compiler: object | None) -> object | None:
    spec = base.spec
    if spec.mpi is None:
        return None
    tc = {"toolchain": compiler.toolchain} if compiler is not None else {}
    opa = spec.interconnect == "opa"  # Omni-Path: PSM2, through libfabric (OFI) as well
    if spec.mpi.name == "mpich":
        return mpich(version=spec.mpi.version,
                     configure_opts=["--with-device=ch4:ofi"] if opa else [], **tc)
    fabric = spec.interconnect in ("mlnx_ofed", "ofed")
    return openmpi(version=spec.mpi.version, cuda=bool(spec.cuda),
                   ucx=UCX if spec.ucx else False, infiniband=fabric and not spec.ucx,
                   pmi=SLURM_PMI2 if "pmi2" in spec.mpi.pmi else False,
                   pmix="internal" if "pmix" in spec.mpi.pmi else False,
                   **({"with_psm2": True, "with_ofi": True} if opa else {}), **tc)


def blocks(base: BaseImage) -> list[object]:
    """The building blocks of a base's own layer (its parent's are in the parent)."""
    spec, own = base.spec, base.own if base.parent else None
    mine = (lambda f: own is None or f in own)  # noqa: E731
    out: list[object] = []
    compiler = None
    if spec.compiler and mine("compiler"):
        maker = gnu if spec.compiler.name == "gnu" else llvm
        compiler = maker(**({"version": spec.compiler.version} if spec.compiler.version else {}))
        out.append(compiler)
    if spec.interconnect == "mlnx_ofed" and mine("interconnect"):
        out.append(mlnx_ofed(**({"version": spec.ofed} if spec.ofed else {})))
    elif spec.interconnect == "ofed" and mine("interconnect"):
        out.append(ofed())
    elif spec.interconnect == "opa" and mine("interconnect"):
        out.append(packages(apt=["libpsm2-dev", "libfabric-dev"],
                            yum=["libpsm2-devel", "libfabric-devel"]))
    if spec.gdrcopy and mine("gdrcopy"):
        out.append(gdrcopy(version=spec.gdrcopy))
    if spec.ucx and mine("ucx"):
        out.append(ucx(version=spec.ucx, cuda=bool(spec.cuda), gdrcopy=bool(spec.gdrcopy),
                       ofed=spec.interconnect in ("mlnx_ofed", "ofed")))
    if spec.mpi and "pmi2" in spec.mpi.pmi and mine("mpi"):
        out.append(slurm_pmi2())
    if mine("mpi") and (mpi := _mpi_block(base, compiler)) is not None:
        out.append(mpi)
    if spec.packages:
        out.append(packages(ospackages=list(spec.packages)))
    return out


def _labels(metadata: dict[str, str], fmt: str) -> object:
    """hpccm writes Dockerfile labels unquoted (a space splits them): ours are quoted."""
    if fmt == "docker":
        return raw(docker=dockerfile.labels(metadata).rstrip("\n"))
    return label(metadata=metadata)


def _env(variables: dict[str, str], fmt: str) -> object:
    if fmt == "docker":
        return raw(docker=dockerfile.env(variables).rstrip("\n"))
    return environment(variables=variables)


def render_base(base: BaseImage, fmt: str, images: str, from_ref: str,
                extra: dict[str, str]) -> str:
    """A base's recipe: one stage, its OS or parent image (``from_ref``) plus its blocks."""
    hpccm.config.set_container_format(FORMATS[fmt])
    hpccm.config.set_singularity_version("3.2")
    stage = hpccm.Stage()
    parent = base.parent
    image = from_ref
    stage += _from(image, fmt, base, None, f"{images}/{parent.tag}.sif" if parent else None)
    for block in blocks(base):
        stage += block
    stage += _labels({"hpcstack.arch": base.arch, "hpcstack.base": parent.tag if parent
                      else build_image(base), "hpcstack.tag": base.tag, **extra}, fmt)
    return str(stage) + "\n"


# --- apps -------------------------------------------------------------------------------


def _toolchain(app: AppImage) -> toolchain:
    flags = app.cpu_flags
    tc = toolchain(CC="gcc", CXX="g++", F77="gfortran", F90="gfortran", FC="gfortran")
    if app.base.spec.compiler and app.base.spec.compiler.name == "llvm":
        tc = toolchain(CC="clang", CXX="clang++")
    if flags:
        tc.CFLAGS = tc.CXXFLAGS = tc.FFLAGS = tc.FCFLAGS = f"-O3 {flags}"
    if app.gpu_arch:
        tc.CUDA_HOME = "/usr/local/cuda"
    return tc


def _app_block(app: AppImage, prefix: str, expand: object) -> object | None:
    """generic_cmake or generic_autotools when the app names a source tarball."""
    spec = app.spec
    if spec.source is None:
        return None
    common = {"url": expand(spec.source), "prefix": prefix, "toolchain": _toolchain(app)}
    if spec.source_dir:
        common["directory"] = expand(spec.source_dir)
    if spec.cmake_opts is not None:
        return generic_cmake(cmake_opts=_opts(spec.cmake_opts, expand), **common)
    return generic_autotools(configure_opts=_opts(spec.configure_opts or [], expand), **common)


def _opts(options: list[str], expand: object) -> list[str]:
    """Expanded options; those that expand to nothing (a CPU variant's GPU flag) are dropped."""
    return [o for o in (expand(opt).strip() for opt in options) if o]


def _runtime_stage(app: AppImage, fmt: str, prefix: str, block: object | None) -> hpccm.Stage:
    stage = hpccm.Stage()
    stage += _from(runtime_image(app.base), fmt, app.base, "runtime")
    for layer in app.base.chain():
        for b in blocks(layer):
            if hasattr(b, "runtime"):
                stage += b.runtime(_from="build")
    if any(b.spec.interconnect == "opa" for b in app.base.chain()):
        stage += packages(apt=["libpsm2-2", "libfabric1"], yum=["libpsm2", "libfabric"])
    pkgs = [p for b in app.base.chain() for p in b.spec.runtime_packages]
    if pkgs + app.spec.runtime_packages:
        stage += packages(ospackages=[*pkgs, *app.spec.runtime_packages])
    stage += (block.runtime(_from="build") if block is not None
              else copy(_from="build", src=prefix, dest=prefix))
    for path in app.spec.keep:
        stage += copy(_from="build", src=path, dest=path)
    return stage


def render_app(app: AppImage, fmt: str, images: str, base_ref: str, labels: dict[str, str],
               expand: object) -> str:
    """An app's recipe: build stage on its base (``base_ref``), then a slim runtime stage."""
    hpccm.config.set_container_format(FORMATS[fmt])
    hpccm.config.set_singularity_version("3.2")
    hpccm.config.set_cpu_target(app.cpu_target)
    spec, base = app.spec, app.base
    prefix = spec.prefix or f"/opt/{spec.name}"
    build = hpccm.Stage()
    build += _from(base_ref, fmt, base, "build", f"{images}/{base.tag}.sif")
    if spec.packages:
        build += packages(ospackages=list(spec.packages))
    block = _app_block(app, prefix, expand)
    if block is not None:
        build += block
    if spec.build:
        build += shell(chdir=False, commands=[expand(c) for c in spec.build])
    final = _runtime_stage(app, fmt, prefix, block) if spec.multistage else build
    env = {"PATH": f"{prefix}/bin:$PATH", **{k: expand(v) for k, v in spec.env.items()}}
    final += _env(env, fmt)
    final += _labels(labels, fmt)
    stages = [build, final] if spec.multistage else [build]
    return "\n\n".join(str(s) for s in stages) + "\n" + _tests(spec.tests, fmt)


def _tests(tests: list[str], fmt: str) -> str:
    """%test for Apptainer; a Dockerfile has no test section, so they become comments."""
    if not tests:
        return ""
    if fmt == "def":
        return "\n%test\n" + "".join(f"    {t}\n" for t in tests)
    return "\n# catalog tests (run with: hpcstack exec IMAGE sh -c ...):\n" + "".join(
        f"#   {t}\n" for t in tests)
