"""Recipes for every image of the matrix: a Singularity definition and a Dockerfile.

Two flavours: ``hpccm`` (from source, NVIDIA's building blocks, see
:mod:`.hpccm_recipes`) and ``debian`` (Debian packages, from the Jinja2
templates in ``templates/``; it builds offline).  Strings in an app's
``source``, ``cmake_opts``, ``configure_opts`` and ``build`` may use
``{{ cpu_target }}``, ``{{ cpu_flags }}``, ``{{ gpu_arch }}`` (``sm_80``),
``{{ gpu_cc }}`` (``80``), ``{{ prefix }}``, ``{{ version }}``, ``{{ arch }}``.
Pure: text in, text out; ``images`` is where base SIFs are (for
``Bootstrap: localimage``) and ``registry`` where Dockerfiles find them
(``naming.base_ref``); ``refs`` pins a ``FROM`` to what a build pushed
(tag -> ``REGISTRY/hpc-base@sha256:...``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jinja2

from hpcstack.catalog import dockerfile, hpccm_recipes, naming
from hpcstack.catalog.expand import AppImage, BaseImage
from hpcstack.catalog.model import DEBIAN_SUITES

FORMATS = ("def", "docker")
FILENAMES = {"def": "{tag}.def", "docker": "{tag}.Dockerfile"}
#: Debian packages a build stage needs for a compiler / an MPI (the runtime has neither).
DEBIAN_DEV = {"gnu": ["gcc", "g++", "make", "libc6-dev"], "llvm": ["clang", "make"],
              "openmpi": ["libopenmpi-dev"], "mpich": ["libmpich-dev"]}
DEBIAN_RUNTIME = {"openmpi": ["openmpi-bin"], "mpich": ["mpich"]}

_env = jinja2.Environment(loader=jinja2.PackageLoader("hpcstack.catalog", "templates"),
                          undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=True)
_env.filters["docker_labels"] = dockerfile.labels
_env.filters["docker_env"] = dockerfile.env
_env.filters["shell_dq"] = lambda value: '"' + "".join(
    "\\" + c if c in '"\\`' else c for c in value) + '"'  # $VAR stays live, as in ENV
_env.filters["b64"] = lambda text: base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Recipe:
    tag: str
    fmt: str
    text: str

    @property
    def filename(self) -> str:
        return FILENAMES[self.fmt].format(tag=self.tag)


def one_line(text: str) -> str:
    """A label value is one line in both formats: line breaks become single spaces."""
    return re.sub(r"[ \t]*[\r\n]+[ \t]*", " ", text.strip())


def ref(image: BaseImage | AppImage, registry: str) -> str:
    """Where an image is pushed, by tag (``naming.base_ref`` / ``naming.app_ref``)."""
    if isinstance(image, BaseImage):
        return naming.base_ref(registry, image.tag)
    return naming.app_ref(registry, image.spec.name, image.tag)


def root_image(base: BaseImage) -> str:
    """The image under a Debian base with no parent: its ``image``, or Debian's slim one."""
    picked = hpccm_recipes.pick(base.spec.image, base.arch)
    return picked or f"debian:{DEBIAN_SUITES[base.spec.os]}-slim"


def app_labels(app: AppImage) -> dict[str, str]:
    """What an app image records about itself (read back by modules and ``catalog list``)."""
    labels = {"hpcstack.tag": app.tag, "hpcstack.base": app.base.tag,
              "hpcstack.arch": app.arch, "hpcstack.cpu_target": app.cpu_target,
              "hpcstack.cpu_flags": app.cpu_flags}
    if app.gpu_arch:
        labels["hpcstack.gpu_arch"] = app.gpu_arch
    if app.spec.commands:
        labels["hpcstack.commands"] = " ".join(app.spec.commands)
    labels["Version"] = app.spec.version
    if app.spec.description:
        labels["Description"] = one_line(app.spec.description)
    return labels


def expander(app: AppImage) -> Callable[[str], str]:
    """Renders ``{{ cpu_flags }}`` & co. in the app's strings; shell's ``${X}`` is left alone."""
    values = {"cpu_target": app.cpu_target, "cpu_flags": app.cpu_flags,
              "gpu_arch": app.gpu_arch or "", "gpu_cc": app.gpu_cc, "arch": app.arch,
              "prefix": app.spec.prefix or f"/opt/{app.spec.name}", "name": app.spec.name,
              "version": app.spec.version, "tag": app.tag}
    strict = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return lambda text: strict.from_string(text).render(values) if "{{" in text else text


# --- Debian flavour ---------------------------------------------------------------------


def _debian_base(base: BaseImage, fmt: str, images: str, registry: str,
                 refs: Mapping[str, str], extra: Mapping[str, str]) -> str:
    spec = base.spec
    pkgs = [] if base.parent and "mpi" not in base.own else DEBIAN_RUNTIME.get(
        spec.mpi.name if spec.mpi else "", [])
    template = _env.get_template(f"base.{'def' if fmt == 'def' else 'Dockerfile'}.j2")
    origin = base.parent.tag if base.parent else f"debian:{DEBIAN_SUITES[spec.os]}"
    labels = {"hpcstack.tag": base.tag, "hpcstack.arch": base.arch, "hpcstack.base": origin,
              **extra}
    own_mpi = spec.mpi if spec.mpi and (not base.parent or "mpi" in base.own) else None
    under = (refs.get(base.parent.tag, ref(base.parent, registry)) if base.parent
             else refs.get(root_image(base), root_image(base)))
    return template.render(
        tag=base.tag, parent=base.parent.tag if base.parent else None, images=images,
        from_ref=under, suite=DEBIAN_SUITES[spec.os], labels=labels,
        packages=[*pkgs, *spec.packages, *spec.runtime_packages],
        mpi=own_mpi.name if own_mpi else None,
        pmi2=bool(own_mpi and own_mpi.name == "openmpi" and "pmi2" in own_mpi.pmi),
        mpich_pmix=bool(own_mpi and own_mpi.name == "mpich" and "pmix" in own_mpi.pmi))


def _debian_dev(base: BaseImage) -> list[str]:
    spec = base.spec
    return [*(DEBIAN_DEV[spec.compiler.name] if spec.compiler else []),
            *(DEBIAN_DEV[spec.mpi.name] if spec.mpi else [])]


def _debian_app(app: AppImage, fmt: str, images: str, registry: str,
                refs: Mapping[str, str], extra: Mapping[str, str]) -> str:
    spec, expand = app.spec, expander(app)
    template = _env.get_template(f"app.{'def' if fmt == 'def' else 'Dockerfile'}.j2")
    files = {path: base64.b64encode(text.encode()).decode() for path, text in spec.files.items()}
    prefix = spec.prefix or f"/opt/{spec.name}"
    dev = _debian_dev(app.base) if spec.build and spec.multistage else []
    return template.render(
        tag=app.tag, images=images, base=app.base.tag,
        base_ref=refs.get(app.base.tag, ref(app.base, registry)), multistage=spec.multistage,
        build_packages=[*dev, *spec.packages], runtime_packages=list(spec.runtime_packages),
        cflags=f"-O2 {app.cpu_flags}".strip(), prefix=prefix, files=files,
        build=[expand(line) for line in spec.build], copy=spec.keep,
        env={"PATH": f"{prefix}/bin:$PATH", **{k: expand(v) for k, v in spec.env.items()}},
        labels={**app_labels(app), **extra},
        description=spec.description, tests=spec.tests)


# --- both -------------------------------------------------------------------------------


def render_image(image: BaseImage | AppImage, fmt: str, images: str,
                 registry: str = "localhost/hpcstack",
                 refs: Mapping[str, str] | None = None,
                 labels: Mapping[str, str] | None = None) -> Recipe:
    """One image's recipe in one format (``def`` or ``docker``); ``labels`` added to its own."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown recipe format {fmt!r}")
    refs, extra = refs or {}, dict(labels or {})
    if isinstance(image, BaseImage):
        parent, root = image.parent, hpccm_recipes.build_image(image)
        text = (_debian_base(image, fmt, images, registry, refs, extra)
                if image.flavour == "debian" else hpccm_recipes.render_base(
                    image, fmt, images, refs.get(parent.tag, ref(parent, registry)) if parent
                    else refs.get(root, root), extra))
    elif image.flavour == "debian":
        text = _debian_app(image, fmt, images, registry, refs, extra)
    else:
        text = hpccm_recipes.render_app(image, fmt, images,
                                        refs.get(image.base.tag, ref(image.base, registry)),
                                        {**app_labels(image), **extra}, expander(image))
    return Recipe(image.tag, fmt, text)
