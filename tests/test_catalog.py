"""The image catalog's pure core: model, matrix expansion, tags, recipes (acceptance 1, 5).

The from-source (hpccm) recipes need the internet to build, so here they are
rendered and checked: every definition passes ``hpcstack def check`` and the
key lines (archspec flags, ``sm_XX``, MPI configure options, aarch64 bases)
are compared with what they must be.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import HPCSTACK_PREFIX, REPO
from hpcstack.catalog import AppImage, expand, load_catalog, parse_catalog, render_image
from hpcstack.catalog.naming import app_tag, base_tag
from hpcstack.deffile import check
from hpcstack.errors import UserError

CENTER = REPO / "examples" / "catalog" / "catalog.yaml"
DEBIAN = REPO / "examples" / "catalog" / "debian.yaml"


def _expanded(path: Path):  # type: ignore[no-untyped-def]
    catalog = load_catalog(path)
    return catalog, expand(catalog, path.name)


@pytest.fixture(scope="module")
def recipes() -> dict[str, str]:
    """Every image of both example catalogs, as {filename: text}."""
    out = {}
    for path in (CENTER, DEBIAN):
        catalog, expanded = _expanded(path)
        for image in expanded.images():
            for fmt in ("def", "docker"):
                recipe = render_image(image, fmt, "/srv/images", catalog.registry)
                out[recipe.filename] = recipe.text
    return out


def _stages(text: str) -> list[str]:
    """A definition's stages (split before each Bootstrap header)."""
    parts = re.split(r"(?mi)^(?=bootstrap:)", text)
    return [p for p in parts if re.match(r"(?i)bootstrap:", p)]


# --- acceptance 1: every variant renders, every .def checks ------------------------------


def test_center_catalog_matrix_and_tags() -> None:
    _, expanded = _expanded(CENTER)
    tags = [i.tag for i in expanded.images()]
    assert "ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.x86_64" in tags
    assert "ubuntu22.04.gcc-12.ompi-4.1.ofed.ucx.aarch64" in tags
    assert {"gromacs-2023.3-skylake_avx512", "gromacs-2023.3-neoverse_n1",
            "gromacs-2023.3-x86_64_v3-sm_80", "lammps-2Aug2023-a64fx",
            "pytorch-2.3.1-x86_64_v3-sm_90", "relion-4.0.1-x86_64_v3-sm_70",
            "openfoam-11-skylake_avx512"} <= set(tags)
    assert {a.spec.name for a in expanded.apps} == {"gromacs", "lammps", "pytorch", "relion",
                                                    "openfoam"}
    assert len(tags) == len(set(tags))


def test_every_variant_has_a_def_and_a_dockerfile(recipes: dict[str, str]) -> None:
    for path in (CENTER, DEBIAN):
        _, expanded = _expanded(path)
        for image in expanded.images():
            assert f"{image.tag}.def" in recipes and f"{image.tag}.Dockerfile" in recipes
            assert f"hpcstack.tag {image.tag}" in recipes[f"{image.tag}.def"]


def test_every_def_passes_check(recipes: dict[str, str]) -> None:
    for name, text in recipes.items():
        if name.endswith(".def"):
            assert check(text, name) == [], name


def test_render_command_and_def_check_cli(tmp_path: Path) -> None:
    """``hpcstack catalog render`` writes both formats; ``hpcstack def check`` accepts all."""
    hpcstack = str(HPCSTACK_PREFIX / "bin" / "hpcstack")
    proc = subprocess.run([hpcstack, "catalog", "render", "-c", str(CENTER), "-o",
                           str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    defs = sorted(tmp_path.glob("*.def"))
    assert len(defs) == len(list(tmp_path.glob("*.Dockerfile"))) == 25  # 6 bases, 19 apps
    proc = subprocess.run([hpcstack, "def", "check", *map(str, defs)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_multistage_app_runtime_stage_is_slim(recipes: dict[str, str]) -> None:
    text = recipes["gromacs-2023.3-x86_64_v3-sm_80.def"]
    build, runtime = _stages(text)
    assert "Stage: build" in build and "Stage: runtime" in runtime
    assert "From: /srv/images/ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.x86_64.sif" in build
    assert "From: nvcr.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04" in runtime
    for path in ("/usr/local/openmpi", "/usr/local/ucx", "/opt/gromacs"):
        assert f"%files from build\n    {path} {path}" in runtime
    assert not re.search(r"^\s+(g\+\+|gcc|gfortran)( \\)?$", runtime, re.M)
    docker = recipes["gromacs-2023.3-x86_64_v3-sm_80.Dockerfile"]
    assert docker.startswith("FROM registry.hpc.example.edu/stack/hpc-base:ubuntu22.04.gcc-12"
                             ".cuda-12.4.ompi-4.1.mofed.ucx.x86_64 AS build")
    assert "COPY --from=build /usr/local/openmpi /usr/local/openmpi" in docker


# --- golden key lines ---------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "flags"), [
    ("gromacs-2023.3-skylake_avx512", "-O3 -march=skylake-avx512 -mtune=skylake-avx512"),
    ("gromacs-2023.3-cascadelake", "-O3 -march=cascadelake -mtune=cascadelake"),
    ("gromacs-2023.3-zen3", "-O3 -march=znver3 -mtune=znver3"),
    ("gromacs-2023.3-neoverse_n1", "-O3 -mcpu=neoverse-n1"),
    ("lammps-2Aug2023-a64fx", "-O3 -mcpu=a64fx -msve-vector-bits=512"),
    ("gromacs-2023.3-x86_64_v3-sm_70", "-O3 -march=x86-64-v3 -mtune=generic"),
])
def test_cpu_target_flags(recipes: dict[str, str], tag: str, flags: str) -> None:
    for fmt in ("def", "Dockerfile"):
        text = recipes[f"{tag}.{fmt}"]
        assert f"CFLAGS='{flags}'" in text and f"CXXFLAGS='{flags}'" in text, fmt
    target = tag.split("-")[2]
    assert f"hpcstack.cpu_target {target}" in recipes[f"{tag}.def"]


def test_openfoam_build_lines_get_flags(recipes: dict[str, str]) -> None:
    assert 'WM_CFLAGS="-mcpu=neoverse-n1"' in recipes["openfoam-11-neoverse_n1.def"]


@pytest.mark.parametrize(("tag", "line"), [
    ("gromacs-2023.3-x86_64_v3-sm_70", "-DGMX_GPU=CUDA -DCMAKE_CUDA_ARCHITECTURES=70 "),
    ("gromacs-2023.3-x86_64_v3-sm_90", "-DGMX_GPU=CUDA -DCMAKE_CUDA_ARCHITECTURES=90 "),
    ("lammps-2Aug2023-x86_64_v3-sm_80", "-DPKG_GPU=ON -DGPU_API=cuda -DGPU_ARCH=sm_80 "),
    ("relion-4.0.1-x86_64_v3-sm_70", "-DCUDA=ON -DCUDA_ARCH=70 "),
])
def test_gpu_arch(recipes: dict[str, str], tag: str, line: str) -> None:
    text = recipes[f"{tag}.def"]
    assert line in text
    sm = tag.rsplit("-", 1)[1]
    assert f"hpcstack.gpu_arch {sm}" in text
    assert f'LABEL hpcstack.gpu_arch="{sm}"' in recipes[f"{tag}.Dockerfile"]


def test_cpu_variants_have_no_gpu_options(recipes: dict[str, str]) -> None:
    text = recipes["gromacs-2023.3-skylake_avx512.def"]
    assert "-DGMX_GPU=OFF" in text and "CUDA_ARCHITECTURES" not in text
    assert "hpcstack.gpu_arch" not in text


def test_pytorch_arch_list(recipes: dict[str, str]) -> None:
    assert 'TORCH_CUDA_ARCH_LIST=8.0' in recipes["pytorch-2.3.1-x86_64_v3-sm_80.def"]


def test_mpi_configure_options(recipes: dict[str, str]) -> None:
    cpu = recipes["ubuntu22.04.gcc-12.ompi-4.1.ofed.ucx.x86_64.def"]
    configure = next(ln for ln in cpu.splitlines() if "openmpi-4.1.6 &&" in ln)
    for opt in ("--with-pmi=/usr/local/slurm-pmi2", "--with-pmix=internal",
                "--with-ucx=/usr/local/ucx", "--without-cuda", "--prefix=/usr/local/openmpi"):
        assert opt in configure
    gpu = recipes["ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.x86_64.def"]
    configure = next(ln for ln in gpu.splitlines() if "openmpi-4.1.6 &&" in ln)
    assert "--with-cuda" in configure and "--with-ucx=/usr/local/ucx" in configure
    assert "From: nvcr.io/nvidia/cuda:12.4.1-devel-ubuntu22.04" in gpu
    assert "# Mellanox OFED version 5.8-4.1.5.0" in gpu and "gdrcopy" in gpu
    assert "--with-cuda=/usr/local/cuda" in gpu  # UCX, CUDA-aware
    mpich = recipes["ubuntu22.04.gcc-12.mpich-4.1.aarch64.def"]
    assert "mpich-4.1.2" in mpich and "/usr/local/slurm-pmi2" in mpich


def test_omni_path_base_and_runtime(recipes: dict[str, str]) -> None:
    """OPA: Open MPI over PSM2 and libfabric; the app's slim stage keeps their libraries."""
    base = recipes["ubuntu22.04.gcc-12.ompi-4.1.opa.x86_64.def"]
    configure = next(ln for ln in base.splitlines() if "openmpi-4.1.6 &&" in ln)
    assert "--with-psm2" in configure and "--with-ofi" in configure
    assert "--without-verbs" in configure and "ucx" not in configure
    assert "libpsm2-dev" in base and "libfabric-dev" in base
    app = recipes["gromacs-2023.3-broadwell.def"]
    runtime = _stages(app)[1]
    assert "libpsm2-2" in runtime and "libfabric1" in runtime and "-dev" not in runtime
    assert "-march=broadwell" in app


def test_aarch64_variants_have_aarch64_bases(recipes: dict[str, str]) -> None:
    _, expanded = _expanded(CENTER)
    arm = [i for i in expanded.images() if i.arch == "aarch64"]
    assert len(arm) >= 5
    for image in arm:
        text = recipes[f"{image.tag}.def"]
        first = _stages(text)[0]
        assert "hpcstack.arch aarch64" in text
        if isinstance(image, AppImage):
            assert image.base.tag.endswith(".aarch64")
            assert f"From: /srv/images/{image.base.tag}.sif" in first
            assert "From: arm64v8/ubuntu:22.04" in _stages(text)[1]
        else:
            assert "From: arm64v8/ubuntu:22.04" in first
    assert recipes["ubuntu22.04.gcc-12.ompi-4.1.ofed.ucx.aarch64.Dockerfile"].startswith(
        "FROM arm64v8/ubuntu:22.04")


def test_layered_base_inherits_and_builds_on_parent(recipes: dict[str, str]) -> None:
    text = recipes["ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.py.x86_64.def"]
    assert "BootStrap: localimage" in text
    assert "From: /srv/images/ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.x86_64.sif" in text
    assert "openmpi-4.1.6" not in text and "python3-venv" in text


def test_debian_flavour_recipes(recipes: dict[str, str]) -> None:
    base = recipes["debian12.gcc-12.ompi-4.1.x86_64.def"]
    assert "Bootstrap: debootstrap\nOSVersion: bookworm" in base
    assert "--no-install-recommends openmpi-bin" in base
    hello = _stages(recipes["mpi-hello-1.0-x86_64.def"])
    assert "gcc g++ make libc6-dev libopenmpi-dev" in hello[0]
    assert "%files from build\n    /opt/mpi-hello\n" in hello[1]
    assert "apt-get install" not in hello[1]
    gromacs = recipes["gromacs-2022.5-x86_64.def"]
    assert len(_stages(gromacs)) == 1 and "--no-install-recommends gromacs" in gromacs


def test_debian_bases_serve_srun_pmi2_and_carry_an_mpi_hello() -> None:
    """Open MPI bases that promise pmi2 build Open MPI's s2 component, MPICH bases that
    promise pmix a PMIx build of MPICH; every MPI base gets /usr/libexec/hpcstack/mpi-hello;
    the compiler leaves again."""
    def base_def(mpi: str) -> str:
        catalog = parse_catalog("bases:\n  - {name: b, flavour: debian, os: debian12, "
                                f"mpi: {mpi}}}\n")
        [base] = expand(catalog).bases
        return render_image(base, "def", "/srv").text

    ompi = base_def("{name: openmpi, version: '4.1', pmi: [pmix, pmi2]}")
    assert "apt-get $apt source --download-only -qq openmpi=" in ompi
    assert "-o /usr/lib/$ma/openmpi/lib/openmpi3/mca_pmix_s2.so" in ompi
    assert "gcc -O2 -o /usr/libexec/hpcstack/mpi-hello -I$inc hello.c $lib" in ompi
    assert "new=$(for p in gcc libc6-dev xz-utils; do dpkg -s $p" in ompi
    assert "apt-mark auto $new >/dev/null && apt-get autoremove -y -qq --purge" in ompi
    pmix_only = base_def("{name: openmpi, version: '4.1', pmi: [pmix]}")
    assert "mca_pmix_s2" not in pmix_only and "/usr/libexec/hpcstack/mpi-hello" in pmix_only
    mpich = base_def("{name: mpich, version: '4.0', pmi: [pmi2]}")
    assert "mca_pmix_s2" not in mpich and "lib=/usr/lib/$ma/libmpich.so.12" in mpich
    assert "--no-install-recommends mpich" in mpich
    assert "mpich-pmix" not in mpich and "libpmix-dev" not in mpich
    # pmix: MPICH rebuilt from Debian's source with PMIx beside Debian's libmpich (which
    # keeps serving pmi2), switched in by an environment script when PMIX_RANK is set.
    both = base_def("{name: mpich, version: '4.0', pmi: [pmix, pmi2]}")
    assert "apt-get $apt source --download-only -qq mpich=" in both
    assert "--with-pmix=/usr/lib/$ma/pmix2 --with-pm=no" in both
    assert "cp -P lib/.libs/libmpich.so.12* /usr/lib/$ma/mpich-pmix/" in both
    assert "if comm -23 debian.sym pmix.sym | grep .; then" in both
    assert "> /.singularity.d/env/80-mpich-pmix.sh" in both
    assert "new=$(for p in gcc libc6-dev make xz-utils libucx-dev libhwloc-dev libpmix-dev;" in both
    assert "lib=/usr/lib/$ma/libmpich.so.12" in both and "mca_pmix_s2" not in both


def test_naming_rule() -> None:
    assert base_tag("ubuntu22.04", ("gnu", "12.3"), "12.4.1", ("openmpi", "4.1.6"),
                    "mlnx_ofed", True, None, "x86_64") == \
        "ubuntu22.04.gcc-12.cuda-12.4.ompi-4.1.mofed.ucx.x86_64"
    assert base_tag("debian12", ("gnu", ""), None, ("mpich", "4.0"), "none", False, "ml",
                    "aarch64") == "debian12.gcc.mpich-4.0.ml.aarch64"
    assert app_tag("gromacs", "2023.3", "x86_64_v3", "sm_80") == "gromacs-2023.3-x86_64_v3-sm_80"
    assert app_tag("lammps", "1", "a64fx", None) == "lammps-1-a64fx"


# --- acceptance 5: bad inputs, one line naming the field ----------------------------------

GOOD_BASES = """\
bases:
  - {name: cpu, os: ubuntu22.04, arch: [x86_64, aarch64], mpi: {name: openmpi, version: 4.1.6}}
  - {name: gpu, os: ubuntu22.04, cuda: 12.4.1, mpi: {name: openmpi, version: 4.1.6}}
"""


def _error(text: str) -> str:
    with pytest.raises(UserError) as info:
        expand(parse_catalog(textwrap.dedent(text), "catalog.yaml"), "catalog.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_base() -> None:
    assert _error(GOOD_BASES + "apps:\n  - {name: a, version: '1', base: nope}\n") == \
        "catalog.yaml: apps[0].base: unknown base 'nope'"
    assert _error(GOOD_BASES + "  - {name: x, base: nope}\n") == \
        "catalog.yaml: bases[2].base: unknown base 'nope'"
    assert _error(GOOD_BASES + "apps:\n  - {name: a, version: '1'}\n").startswith(
        "catalog.yaml: apps[0].base: missing")


def test_unknown_cpu_target() -> None:
    apps = """apps:
  - {name: a, version: '1', base: cpu}
  - {name: b, version: '1', base: cpu}
  - {name: c, version: '1', base: cpu, cpu_target: [zen3, skylake-avx]}
"""
    assert _error(GOOD_BASES + apps) == (
        "catalog.yaml: apps[2].cpu_target: unknown target 'skylake-avx' "
        "(archspec names, e.g. skylake_avx512)")
    row = "apps:\n  - {name: a, version: '1', variants: [{base: cpu, cpu_target: zen9}]}\n"
    assert _error(GOOD_BASES + row).startswith(
        "catalog.yaml: apps[0].variants[0].cpu_target: unknown target 'zen9'")


def test_cpu_target_of_another_arch_or_compiler() -> None:
    bases = "bases:\n  - {name: cpu, compiler: {version: '8'}}\n"
    assert _error(bases + "apps:\n  - {name: a, version: '1', base: cpu, "
                  "cpu_target: neoverse_n1}\n") == (
        "catalog.yaml: apps[0].cpu_target: neoverse_n1 is aarch64, base 'cpu' is x86_64")
    message = _error(bases + "apps:\n  - {name: a, version: '1', base: cpu, "
                     "cpu_target: sapphirerapids}\n")
    assert message.startswith("catalog.yaml: apps[0].cpu_target: cannot produce optimized "
                              "binary for micro-architecture 'sapphirerapids' with gcc@8")


def test_unknown_gpu_arch() -> None:
    assert _error(GOOD_BASES + "apps:\n  - {name: a, version: '1', base: gpu, "
                  "gpu_arch: [sm_80, sm_99]}\n").startswith(
        "catalog.yaml: apps[0].gpu_arch: unknown GPU arch 'sm_99' (e.g. sm_60")
    assert _error(GOOD_BASES + "apps:\n  - {name: a, version: '1', base: cpu, "
                  "gpu_arch: sm_80}\n") == (
        "catalog.yaml: apps[0].gpu_arch: sm_80 needs a base with cuda; 'cpu' has none")


def test_base_cycle() -> None:
    text = """bases:
  - {name: a, base: c}
  - {name: b, base: a}
  - {name: c, base: b}
"""
    assert _error(text) == "catalog.yaml: bases[0].base: cycle of bases: a -> c -> b -> a"
    assert _error("bases:\n  - {name: a, base: a}\n") == \
        "catalog.yaml: bases[0].base: cycle of bases: a -> a"


def test_duplicate_tag() -> None:
    twice = GOOD_BASES + """apps:
  - {name: a, version: '1', base: cpu, cpu_target: zen3}
  - {name: a, version: '1', variants: [{base: gpu, cpu_target: [zen2]}, {base: cpu,
     cpu_target: [zen3]}]}
"""
    assert _error(twice) == ("catalog.yaml: apps[1].variants[1]: tag 'a-1-zen3' is already "
                             "used by apps[0]")
    same_base = GOOD_BASES + "  - {name: cpu2, os: ubuntu22.04, mpi: {version: 4.1.1}}\n"
    assert _error(same_base) == ("catalog.yaml: bases[2]: tag 'ubuntu22.04.gcc.ompi-4.1.x86_64'"
                                 " is already used by bases[0]")
    assert _error(GOOD_BASES + "  - {name: cpu}\n") == \
        "catalog.yaml: bases[2].name: 'cpu' is already bases[0]"


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(UserError, match=r"^catalog.yaml: bases\[0\].arch\[0\]: Input should be"):
        parse_catalog("bases:\n  - {name: a, arch: [sparc]}\n", "catalog.yaml")
    with pytest.raises(UserError, match=r"^catalog.yaml: apps\[0\].colour: Extra inputs"):
        parse_catalog("apps:\n  - {name: a, version: '1', colour: red}\n", "catalog.yaml")
    with pytest.raises(UserError, match=r"^catalog.yaml:3: "):
        parse_catalog("bases:\n  - [\n", "catalog.yaml")
    with pytest.raises(UserError, match="debian flavour needs a Debian release"):
        expand(parse_catalog("bases:\n  - {name: a, flavour: debian, os: ubuntu22.04}\n"))


def test_debian13_open_mpi_cannot_promise_pmi2() -> None:
    """Debian 13's Open MPI 5 has no PMI-2 client: a base promising one is refused by
    name, and its PMIx-only base finds the MPI package of that release by its library."""
    bad = "bases:\n  - {name: b, flavour: debian, os: debian13, mpi: {version: '5.0', " \
          "pmi: [pmix, pmi2]}}\n"
    with pytest.raises(UserError, match=r"^catalog.yaml: bases\[0\]: .*debian13's Open MPI 5 "
                       r"has no PMI-2 client; use pmi: \[pmix\]"):
        parse_catalog(bad)
    good = parse_catalog(bad.replace("pmix, pmi2", "pmix"))
    [base] = expand(good).bases
    text = render_image(base, "def", "/srv").text
    assert "OSVersion: trixie" in text and "libopenmpi3" not in text
    assert 'ompi=$(dpkg -S "$(readlink -f /usr/lib/$ma/libmpi.so.40)"' in text


def test_cli_bad_catalog_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.yaml"
    bad.write_text(GOOD_BASES + "apps:\n  - {name: a, version: '1', base: cpu, "
                   "cpu_target: skylake-avx}\n")
    proc = subprocess.run([str(HPCSTACK_PREFIX / "bin" / "hpcstack"), "catalog", "list", "-c",
                           str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("hpcstack: error: catalog.yaml: apps[0].cpu_target: unknown "
                                  "target 'skylake-avx'")
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
