"""Variant matrix expansion: a catalog to the concrete images it describes.

Bases expand per architecture; apps per (base architecture x CPU target x GPU
arch), row by row of ``variants``.  Everything that refers to something else is
checked here, each error naming the field: unknown bases, base cycles, CPU
targets archspec does not know (or the compiler cannot target), GPU archs,
duplicate tags.  Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import archspec.cpu

from hpcstack.catalog import naming
from hpcstack.catalog.model import DEBIAN_SUITES, App, Base, Catalog
from hpcstack.errors import UserError

#: CUDA compute capabilities nvcc knows (``sm_XX``).
GPU_ARCHES = ("sm_35", "sm_37", "sm_50", "sm_52", "sm_53", "sm_60", "sm_61", "sm_62", "sm_70",
              "sm_72", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a")
#: Fields a base takes from the base it is built on, unless it sets them itself.
INHERITED = ("flavour", "os", "arch", "compiler", "mpi", "cuda", "interconnect", "ofed", "ucx",
             "gdrcopy", "image", "runtime_image")


@dataclass(frozen=True)
class BaseImage:
    """One base variant: an effective base (inheritance applied) for one architecture."""

    spec: Base
    arch: str
    tag: str
    where: str
    parent: BaseImage | None = None
    own: frozenset[str] = frozenset()

    @property
    def flavour(self) -> str:
        return self.spec.flavour

    def chain(self) -> list[BaseImage]:
        """This base and the ones under it, bottom first."""
        return [*(self.parent.chain() if self.parent else []), self]


@dataclass(frozen=True)
class AppImage:
    """One app variant."""

    spec: App
    base: BaseImage
    cpu_target: str
    gpu_arch: str | None
    cpu_flags: str
    tag: str
    where: str

    @property
    def arch(self) -> str:
        return self.base.arch

    @property
    def flavour(self) -> str:
        return self.base.flavour

    @property
    def module_version(self) -> str:
        return naming.module_version(self.tag, self.spec.name)

    @property
    def gpu_cc(self) -> str:
        """``sm_80`` -> ``80`` (CMake's CUDA_ARCHITECTURES, nvcc's -arch=compute_80)."""
        return self.gpu_arch.removeprefix("sm_") if self.gpu_arch else ""


@dataclass
class Expanded:
    bases: list[BaseImage] = field(default_factory=list)
    apps: list[AppImage] = field(default_factory=list)

    def images(self) -> list[BaseImage | AppImage]:
        return [*self.bases, *self.apps]


def _fail(where: str, msg: str) -> UserError:
    return UserError(f"{where}: {msg}")


# --- bases ------------------------------------------------------------------------------


def _base_order(catalog: Catalog, file: str) -> list[int]:
    """Indexes of bases, each after the one it is built on; cycles and unknowns refused."""
    index = {b.name: i for i, b in enumerate(catalog.bases)}
    order: list[int] = []
    state: dict[int, str] = {}

    def visit(i: int, path: list[str]) -> None:
        if state.get(i) == "done":
            return
        base = catalog.bases[i]
        if state.get(i) == "active":
            cycle = " -> ".join([*path[path.index(base.name):], base.name])
            raise _fail(f"{file}: bases[{i}].base", f"cycle of bases: {cycle}")
        state[i] = "active"
        if base.base is not None:
            if base.base not in index:
                raise _fail(f"{file}: bases[{i}].base", f"unknown base {base.base!r}")
            visit(index[base.base], [*path, base.name])
        state[i] = "done"
        order.append(i)

    first: dict[str, int] = {}
    for i, base in enumerate(catalog.bases):
        if first.setdefault(base.name, i) != i:
            raise _fail(f"{file}: bases[{i}].name", f"{base.name!r} is already bases"
                        f"[{first[base.name]}]")
    for i in range(len(catalog.bases)):
        visit(i, [])
    return order


def _inherit(base: Base, parent: Base | None) -> Base:
    if parent is None:
        return base
    taken = {k: getattr(parent, k) for k in INHERITED if k not in base.model_fields_set}
    return base.model_copy(update=taken)


def _base_tag(base: Base, arch: str) -> str:
    compiler = (base.compiler.name, base.compiler.version) if base.compiler else None
    mpi = (base.mpi.name, base.mpi.version) if base.mpi else None
    return naming.base_tag(base.os, compiler, base.cuda, mpi, base.interconnect,
                           bool(base.ucx), base.suffix, arch)


def expand_bases(catalog: Catalog, file: str) -> dict[str, dict[str, BaseImage]]:
    """name -> arch -> BaseImage, parents first."""
    out: dict[str, dict[str, BaseImage]] = {}
    for i in _base_order(catalog, file):
        raw = catalog.bases[i]
        parents = out.get(raw.base or "", {})
        parent_spec = next(iter(parents.values())).spec if parents else None
        spec = _inherit(raw, parent_spec)
        where = f"{file}: bases[{i}]"
        if spec.flavour == "debian" and spec.os not in DEBIAN_SUITES:
            raise _fail(f"{where}.os", f"the debian flavour needs a Debian release, not "
                        f"{spec.os!r}")
        out[spec.name] = {}
        for arch in spec.arch:
            if raw.base is not None and arch not in parents:
                raise _fail(f"{where}.arch", f"{arch}: base {raw.base!r} is not built for it")
            out[spec.name][arch] = BaseImage(spec, arch, _base_tag(spec, arch), where,
                                             parents.get(arch), frozenset(raw.model_fields_set))
    return out


# --- apps -------------------------------------------------------------------------------


def _rows(app: App) -> list[tuple[str, str | None, list[str] | None, list[str] | None]]:
    """(field path, base, cpu targets, gpu archs) per matrix row; None means the app's."""
    if not app.variants:
        return [("", app.base, app.cpu_target or None, app.gpu_arch or None)]
    return [(f".variants[{j}]", v.base or app.base,
             v.cpu_target if v.cpu_target is not None else app.cpu_target or None,
             v.gpu_arch if v.gpu_arch is not None else app.gpu_arch or None)
            for j, v in enumerate(app.variants)]


def cpu_flags(target: str, base: BaseImage, where: str) -> str:
    """archspec's optimization flags for ``target`` with the base's compiler."""
    if target not in archspec.cpu.TARGETS:
        raise _fail(where, f"unknown target {target!r} (archspec names, e.g. skylake_avx512)")
    micro = archspec.cpu.TARGETS[target]
    if str(micro.family) != base.arch:
        raise _fail(where, f"{target} is {micro.family}, base {base.spec.name!r} is "
                    f"{base.arch}")
    compiler = base.spec.compiler
    if compiler is None:
        return ""
    name = naming.COMPILERS[compiler.name]
    try:
        return micro.optimization_flags(name, compiler.version or "9999")
    except (ValueError, archspec.cpu.UnsupportedMicroarchitecture) as exc:
        raise _fail(where, str(exc)) from None


def _gpu(arch: str, base: BaseImage, where: str) -> str:
    if arch not in GPU_ARCHES:
        known = ", ".join(a for a in GPU_ARCHES if re.fullmatch(r"sm_[6-9]\d", a))
        raise _fail(where, f"unknown GPU arch {arch!r} (e.g. {known})")
    if not base.spec.cuda:
        raise _fail(where, f"{arch} needs a base with cuda; {base.spec.name!r} has none")
    return arch


def expand_app(app: App, i: int, bases: dict[str, dict[str, BaseImage]],
               file: str) -> list[AppImage]:
    """Every variant of one app."""
    out = []
    for path, base_name, targets, gpus in _rows(app):
        where = f"{file}: apps[{i}]{path}"
        if base_name is None:
            raise _fail(f"{where}.base", "missing (which base is the app built on?)")
        if base_name not in bases:
            raise _fail(f"{where}.base", f"unknown base {base_name!r}")
        per_arch = bases[base_name]
        for target in targets or list(per_arch):
            family = (str(archspec.cpu.TARGETS[target].family)
                      if target in archspec.cpu.TARGETS else None)
            base = per_arch.get(family or "") or next(iter(per_arch.values()))
            flags = cpu_flags(target, base, f"{where}.cpu_target")
            for gpu in gpus or [None]:
                if gpu is not None:
                    _gpu(gpu, base, f"{where}.gpu_arch")
                tag = naming.app_tag(app.name, app.version, target, gpu)
                out.append(AppImage(app, base, target, gpu, flags, tag, where))
    return out


def _unique(images: list[BaseImage | AppImage]) -> None:
    seen: dict[str, str] = {}
    for image in images:
        if image.tag in seen:
            raise UserError(f"{image.where}: tag {image.tag!r} is already used by "
                            f"{seen[image.tag].split(': ', 1)[1]}")
        seen[image.tag] = image.where


def expand(catalog: Catalog, file: str = "catalog.yaml") -> Expanded:
    """The whole matrix, every reference checked, every tag unique."""
    bases = expand_bases(catalog, file)
    result = Expanded([b for per in bases.values() for b in per.values()])
    for i, app in enumerate(catalog.apps):
        result.apps += expand_app(app, i, bases, file)
    _unique(result.images())
    return result
