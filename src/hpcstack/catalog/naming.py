"""The one naming rule for image tags (documented in ``docs/catalog.md``).

Base: the components that decide binary compatibility, in a fixed order,
joined by dots, the architecture last::

    OS.COMPILER-MAJOR[.cuda-MAJOR.MINOR][.MPI-MAJOR.MINOR][.FABRIC][.ucx][.SUFFIX].ARCH
    ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.x86_64
    debian12.gcc-12.ompi-4.1.x86_64

App: name, version, and what it was optimized for::

    NAME-VERSION-CPU_TARGET[-SM_XX]       gromacs-2023.3-skylake_avx512
                                          gromacs-2023.3-x86_64_v3-sm_80

The module an app is published as is ``NAME/VERSION-CPU_TARGET[-SM_XX]``
(the tag without ``NAME-``).

In a registry (``catalog build --format oci``) a base is
``REGISTRY/hpc-base:TAG`` and an app ``REGISTRY/NAME:VERSION-CPU_TARGET[-SM_XX]``.
"""

from __future__ import annotations

COMPILERS = {"gnu": "gcc", "llvm": "clang"}
MPIS = {"openmpi": "ompi", "mpich": "mpich"}
FABRICS = {"none": "", "mlnx_ofed": "mofed", "ofed": "ofed", "opa": "opa"}


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def base_tag(os: str, compiler: tuple[str, str] | None, cuda: str | None,
             mpi: tuple[str, str] | None, fabric: str, ucx: bool, suffix: str | None,
             arch: str) -> str:
    """The tag of one base variant (see the module docstring)."""
    parts = [os]
    if compiler:
        name, version = compiler
        parts.append(f"{COMPILERS[name]}-{version.split('.')[0]}" if version
                     else COMPILERS[name])
    if cuda:
        parts.append(f"cuda-{major_minor(cuda)}")
    if mpi:
        parts.append(f"{MPIS[mpi[0]]}-{major_minor(mpi[1])}")
    parts += [p for p in (FABRICS[fabric], "ucx" if ucx else "", suffix or "") if p]
    return ".".join([*parts, arch])


def app_tag(name: str, version: str, cpu_target: str, gpu_arch: str | None) -> str:
    """The tag of one app variant."""
    return "-".join(p for p in (name, version, cpu_target, gpu_arch) if p)


def module_version(tag: str, name: str) -> str:
    """The module version an app variant is published as: its tag without the name."""
    return tag.removeprefix(f"{name}-")


def repository(name: str) -> str:
    """A catalog name as an OCI repository component (lowercase, ``[a-z0-9._-]``)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name.lower())


def base_ref(registry: str, tag: str) -> str:
    """Where a base is pushed: ``REGISTRY/hpc-base:TAG`` (one repository for all bases)."""
    return f"{registry}/hpc-base:{tag.replace('+', '_')}"


def app_ref(registry: str, name: str, tag: str) -> str:
    """Where an app is pushed: ``REGISTRY/NAME:VERSION-TARGET[-SM_XX]`` (its module version)."""
    return f"{registry}/{repository(name)}:{module_version(tag, name).replace('+', '_')}"
