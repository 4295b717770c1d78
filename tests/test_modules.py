"""Container modules end to end: real images, real Lmod and Environment Modules,
a real single-node Slurm with MUNGE, host Open MPI launching one container per rank.

Everything a user does runs as the unprivileged test user; only the Slurm and
MUNGE daemons run as root (they start jobs as that user).  The GROMACS and
LAMMPS images are built once per module from ``examples/modules/*.def``.

Those images are Debian 12's (Open MPI 4.1 with its PMI-2 client, MPICH 4.0): both
releases' Slurm start them with ``srun --mpi=pmi2`` and ``--mpi=pmix``. A host's own
``mpirun`` starts only ranks of its own Open MPI major version (4: ORTE, 5: PRRTE), so on
a Debian 13 host the ``mpirun`` test runs GROMACS built from the same definition for the
host's release (docs/modules.md, "Which launcher works with which image").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import slurm as slurm_fixture
from conftest import HOST_SUITE, REPO, User, need
from hpcstack.scheduler import submit, wait

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples" / "modules"
LMOD_INIT = "/usr/share/lmod/lmod/init/bash"


def put(user: User, path: Path, text: str) -> Path:
    path.write_text(text)
    os.chown(path, user.uid, user.gid)
    return path


# --- fixtures ---------------------------------------------------------------------------


def build_example(user: User, example: str, suite: str = "bookworm") -> Path:
    """``examples/modules/EXAMPLE.def`` built as the user for ``suite`` (its ``OSVersion``);
    an image built earlier from the very same text is reused."""
    work = user.home / "work" / "modules-images"
    user.run(["mkdir", "-p", str(work)], check=True)
    name = example if suite == "bookworm" else f"{example}-{suite}"
    text = re.sub(r"(?m)^OSVersion: bookworm$", f"OSVersion: {suite}",
                  (EXAMPLES / f"{example}.def").read_text())
    deffile, sif = work / f"{name}.def", work / f"{name}.sif"
    if sif.exists() and deffile.exists() and deffile.read_text() == text:
        return sif
    put(user, deffile, text)
    proc = user.hpcstack("build", "-q", "-F", sif.name, deffile.name, cwd=work)
    if proc.returncode != 0:
        deffile.unlink()
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return sif


@pytest.fixture(scope="module")
def images(user: User) -> dict[str, Path]:
    """gromacs.sif, lammps.sif (Open MPI), mpi-hello-mpich.sif (Debian's MPICH) and
    mpi-hello-mpich-pmix.sif (plus MPICH rebuilt with PMIx), built by hpcstack as the user
    from examples/modules/; and ``gromacs-host``, GROMACS for the host's own release
    (the same image on Debian 12).

    An image built earlier from the very same definition file is reused (a fresh
    machine, as in CI, builds all four: about five minutes here for the first three, and
    six to nine more for the MPICH build of the fourth; a Debian 13 host four more for its
    own GROMACS)."""
    need("mmdebstrap", "unshare", "mksquashfs", "siftool", "ch-run", "unsquashfs")
    # The bootstrap is shared through the build cache: build one first when it is cold.
    names = ("gromacs", "lammps", "mpi-hello-mpich", "mpi-hello-mpich-pmix")
    found = {name: build_example(user, name) for name in names}
    return found | {"gromacs-host": build_example(user, "gromacs", HOST_SUITE)}


SITE = """\
root: {root}
module_system: both
runtime: charliecloud
shell_functions: {functions}
launchers: [pmi2, pmix, mpirun]
apps:
  - name: gromacs
    version: 2022-cpu
    image: {gromacs}
    mpi: openmpi
    state: default
  - name: lammps
    version: 2022-cpu
    image: {lammps}
    commands: [lmp]
    mpi: openmpi
  - name: mpi-hello
    version: mpich
    image: {mpich}
    mpi: mpich
  - name: mpi-hello
    version: mpich-pmix
    image: {mpich_pmix}
    mpi: mpich
"""


@pytest.fixture(scope="module")
def site(user: User, images: dict[str, Path]) -> Path:
    """The example applications deployed as gromacs/2022-cpu and lammps/2022-cpu."""
    need("ch-run", "unsquashfs")
    work = user.workdir("modules-site")
    path = put(user, work / "site.yaml", SITE.format(
        root=work / "modules", functions="true", gromacs=images["gromacs"],
        lammps=images["lammps"], mpich=images["mpi-hello-mpich"],
        mpich_pmix=images["mpi-hello-mpich-pmix"]))
    proc = user.hpcstack("modules", "deploy", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def root(site: Path) -> Path:
    return site.parent / "modules"


@pytest.fixture(scope="module")
def host_mpi_root(user: User, images: dict[str, Path], root: Path) -> Path:
    """A module tree whose gromacs/2022-cpu has the host's Open MPI, for the host's
    ``mpirun``: the shared tree on Debian 12, one of its own on Debian 13."""
    if images["gromacs-host"] == images["gromacs"]:
        return root
    work = user.workdir("modules-site-host")
    path = put(user, work / "site.yaml", f"""\
root: {work / "modules"}
runtime: charliecloud
apps:
  - {{name: gromacs, version: 2022-cpu, image: {images["gromacs-host"]}, mpi: openmpi}}
""")
    proc = user.hpcstack("modules", "deploy", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    return work / "modules"


@pytest.fixture(scope="module")
def tcl_modulecmd() -> Iterator[Path]:
    """Environment Modules' modulecmd.tcl, unpacked from its Debian package (it conflicts
    with the lmod package, so it is not installed)."""
    need("apt-get", "dpkg", "tclsh")
    tmp = Path(tempfile.mkdtemp(prefix="hpcstack-envmodules-"))
    try:
        proc = subprocess.run(["apt-get", "download", "environment-modules"], cwd=tmp,
                              capture_output=True, text=True, check=False)
        debs = list(tmp.glob("environment-modules_*.deb"))
        if proc.returncode != 0 or not debs:
            pytest.fail(f"apt-get download environment-modules: {proc.stderr[-500:]}")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(tmp / "root")], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
        found = list((tmp / "root").glob("usr/lib/*/modulecmd.tcl"))
        assert found, "modulecmd.tcl not in the package"
        yield found[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lmod(user: User, root: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script as the user with Lmod set up and our tree on MODULEPATH."""
    need("bash")
    if not Path(LMOD_INIT).exists():
        pytest.skip("Lmod is not installed")
    prelude = f"source {LMOD_INIT}\nexport MODULEPATH={root}/lmod\n"
    return user.run(["bash", "-c", prelude + textwrap.dedent(script)], env=env, timeout=300)


def tcl(user: User, root: Path, modulecmd: Path, script: str) -> subprocess.CompletedProcess[str]:
    prelude = (f'module() {{ eval "$(tclsh {modulecmd} bash "$@")"; }}\n'
               f"export MODULEPATH={root}/tcl\n")
    return user.run(["bash", "-c", prelude + textwrap.dedent(script)], timeout=300)


# --- 1, 2: load, run, unload ------------------------------------------------------------

ENV_DUMP = "env -0 | sort -z | tr '\\0' '\\n' | grep -v -E '^(_|SHLVL|BASH_FUNC_|OLDPWD)' ; "
LMOD_OWN = ("_ModuleTable", "__LMOD_REF_COUNT", "LMOD_", "_LMFILES_", "LOADEDMODULES",
            "__Init_Default_Modules", "MODULESHOME", "BASH_ENV", "_Lmod", "__MODULES")


def _env_lines(text: str) -> set[str]:
    return {ln for ln in text.splitlines() if "=" in ln and not ln.startswith(LMOD_OWN)}


def test_lmod_load_runs_gmx_mpi_and_unload_restores(user: User, root: Path) -> None:
    proc = lmod(user, root, f"""
        cd ~
        {ENV_DUMP} echo ====
        module load gromacs/2022-cpu
        gmx_mpi --version | grep -E '^(GROMACS version|MPI library)'
        echo ====
        module unload gromacs/2022-cpu
        {ENV_DUMP}
    """)
    assert proc.returncode == 0, proc.stderr
    before, ran, after = proc.stdout.split("====\n")
    assert "GROMACS version:    2022.5" in ran and "MPI library:        MPI" in ran
    assert _env_lines(before) == _env_lines(after)


def test_lmod_default_version_and_whatis(user: User, root: Path) -> None:
    proc = lmod(user, root, """
        module load gromacs && echo "$LOADEDMODULES"
        module whatis gromacs 2>&1
        module help lammps 2>&1
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "gromacs/2022-cpu"
    assert "GROMACS 2022.5 molecular dynamics" in proc.stdout + proc.stderr
    assert "LAMMPS 2022-01-06 from Debian bookworm" in proc.stdout + proc.stderr


def test_lmod_shell_functions_exported(user: User, root: Path) -> None:
    proc = lmod(user, root, """
        module load gromacs/2022-cpu
        declare -f gmx_mpi
        bash -c 'declare -F gmx_mpi'
    """)
    assert proc.returncode == 0, proc.stderr
    assert 'gromacs/2022-cpu/gmx_mpi" "$@"' in proc.stdout
    assert proc.stdout.strip().endswith("gmx_mpi")


def test_tcl_modulefiles_under_environment_modules(user: User, root: Path,
                                                   tcl_modulecmd: Path) -> None:
    proc = tcl(user, root, tcl_modulecmd, """
        cd ~
        before=$(env | sort | grep -v -E '^(_|SHLVL|OLDPWD)=')
        module load gromacs
        echo "$LOADEDMODULES"
        gmx_mpi --version | grep '^GROMACS version'
        module load lammps/2022-cpu
        echo 'print "hello from lammps"' | lmp -log none | grep '^hello from lammps'
        module unload gromacs lammps
        after=$(env | sort | grep -v -E '^(_|SHLVL|OLDPWD|LOADEDMODULES|_LMFILES_)=')
        before=$(echo "$before" | grep -v -E '^(LOADEDMODULES|_LMFILES_)=')
        [ "$before" = "$after" ] && echo restored || diff <(echo "$before") <(echo "$after")
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "gromacs/2022-cpu", proc.stdout + proc.stderr
    assert lines[1].startswith("GROMACS version:    2022.5")
    assert "hello from lammps" in lines
    assert lines[-1] == "restored", proc.stdout


# --- 4: the wrapper from any parent -----------------------------------------------------


def test_wrapper_from_env_xargs_subprocess_bash_c(user: User, root: Path) -> None:
    py = shutil.which("python3", path="/usr/bin")
    proc = lmod(user, root, f"""
        module load gromacs/2022-cpu
        cd ~
        env gmx_mpi --version | grep -c '^GROMACS version'
        echo --version | xargs gmx_mpi | grep -c '^GROMACS version'
        {py} -c 'import subprocess; r = subprocess.run(["gmx_mpi", "--version"],
            capture_output=True, text=True, check=True); print(r.stdout.count("GROMACS version"))'
        bash -c 'gmx_mpi --version' | grep -c '^GROMACS version'
        (gmx_mpi --version) | grep -c '^GROMACS version'
        gmx_mpi -h 'an argument with  spaces' >/dev/null 2>&1; echo "status $?"
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:5] == ["1"] * 5, proc.stdout + proc.stderr


def test_mpirun_two_ranks(user: User, host_mpi_root: Path) -> None:
    need("mpirun")
    work = user.workdir("modules-mpirun")
    proc = lmod(user, host_mpi_root, f"""
        module load gromacs/2022-cpu
        cd {work}
        gmx grompp -quiet -f /opt/water/md.mdp -c /opt/water/conf.gro -p /opt/water/topol.top \\
            -o topol.tpr >/dev/null 2>&1
        timeout 240 mpirun -np 2 gmx_mpi mdrun -s topol.tpr -nsteps 200 2>&1
    """)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Using 2 MPI processes" in proc.stdout
    assert (work / "confout.gro").exists()


# --- 3: unchanged job scripts under Slurm -----------------------------------------------

GROMACS_JOB = """\
#!/bin/bash
#SBATCH -n 2
#SBATCH -o job.out
module load gromacs/2022-cpu
gmx grompp -f /opt/water/md.mdp -c /opt/water/conf.gro -p /opt/water/topol.top -o topol.tpr
srun --mpi=pmix gmx_mpi mdrun -s topol.tpr -nsteps 200
"""

LAMMPS_JOB = """\
#!/bin/bash
#SBATCH -n 2
#SBATCH -o job.out
module load lammps/2022-cpu
srun --mpi=pmix lmp -in in.lj
"""

IN_LJ = """\
# 3d Lennard-Jones melt (LAMMPS bench/in.lj, 100 steps)
variable     x index 1
variable     y index 1
variable     z index 1
variable     xx equal 20*$x
variable     yy equal 20*$y
variable     zz equal 20*$z
units        lj
atom_style   atomic
lattice      fcc 0.8442
region       box block 0 ${xx} 0 ${yy} 0 ${zz}
create_box   1 box
create_atoms 1 box
mass         1 1.0
velocity     all create 1.44 87287 loop geom
pair_style   lj/cut 2.5
pair_coeff   1 1 1.0 1.0 2.5
neighbor     0.3 bin
neigh_modify delay 0 every 20 check no
fix          1 all nve
run          100
"""


def _sbatch(user: User, root: Path, cluster: slurm_fixture.Slurm, work: Path,
            script: str) -> str:
    """Submit like a user whose login shell has Lmod (sbatch passes the environment on).

    The job's output: ``job.out`` when the script names it, else Slurm's
    ``slurm-JOBID.out``."""
    put(user, work / "job.sh", script)
    prelude = f"source {LMOD_INIT}\nexport MODULEPATH={root}/lmod\ncd {work}\n"

    def run(argv):  # type: ignore[no-untyped-def]
        return user.run(["bash", "-c", prelude + shlex.join(argv)], env=cluster.env)

    job = submit(work / "job.sh", cwd=work, run=run)
    result = wait(job, timeout=300, run=lambda argv: user.run(argv, env=cluster.env))
    path = work / "job.out" if "-o job.out" in script else work / f"slurm-{job}.out"
    out = path.read_text() if path.exists() else ""
    assert result.ok, f"{result.state} {result.exit_code}\n{out[-4000:]}\n{cluster.logs()}"
    return out


def test_sbatch_gromacs_srun_pmix(user: User, root: Path, cluster: slurm_fixture.Slurm) -> None:
    out = _sbatch(user, root, cluster, user.workdir("modules-job-gromacs"), GROMACS_JOB)
    assert "Using 2 MPI processes" in out
    assert "Performance:" in out


def test_sbatch_lammps_srun_pmix(user: User, root: Path, cluster: slurm_fixture.Slurm) -> None:
    work = user.workdir("modules-job-lammps")
    put(user, work / "in.lj", IN_LJ)
    out = _sbatch(user, root, cluster, work, LAMMPS_JOB)
    assert "by 2 MPI processor" in out or "2 by 1 by 1 MPI processor grid" in out, out[-3000:]
    assert "Loop time of" in out


# The seed's own job scripts (the talk's slides), unchanged but for the module names,
# the partition and small inputs: `srun --mpi=pmi2`, which Debian's Open MPI cannot serve
# by itself; the example images add Open MPI's PMI-2 component (docs/modules.md, 4).
SEED_GROMACS_JOB = """\
#!/bin/bash
#SBATCH --job-name=gmx_test
#SBATCH --partition=debug
#SBATCH -n 2
#SBATCH --ntasks-per-node=2

module load gromacs/2022-cpu

srun --mpi=pmi2 gmx_mpi mdrun -resethway -noconfout -nsteps 200 -v -ntomp 1
"""

SEED_LAMMPS_JOB = """\
#!/bin/bash
#SBATCH --job-name=lmp_test
#SBATCH --partition=debug
#SBATCH -n 2
#SBATCH --ntasks-per-node=2

module load lammps/2022-cpu

srun --mpi=pmi2 lmp -in in.lj
"""


def test_seed_gromacs_job_srun_pmi2(user: User, root: Path,
                                    cluster: slurm_fixture.Slurm) -> None:
    work = user.workdir("modules-seed-gromacs")
    proc = lmod(user, root, f"""
        module load gromacs/2022-cpu
        cd {work}
        gmx grompp -quiet -f /opt/water/md.mdp -c /opt/water/conf.gro \\
            -p /opt/water/topol.top -o topol.tpr
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = _sbatch(user, root, cluster, work, SEED_GROMACS_JOB)
    assert "Using 2 MPI processes" in out, out[-3000:]
    assert "Performance:" in out


def test_seed_lammps_job_srun_pmi2(user: User, root: Path,
                                   cluster: slurm_fixture.Slurm) -> None:
    work = user.workdir("modules-seed-lammps")
    put(user, work / "in.lj", IN_LJ)
    out = _sbatch(user, root, cluster, work, SEED_LAMMPS_JOB)
    assert "2 by 1 by 1 MPI processor grid" in out or "by 2 MPI processor" in out, out[-3000:]
    assert "Loop time of" in out


# --- runtime: apptainer, the real one (tests/conftest.py `apptainer`) ---------------------

APPTAINER_SITE = """\
root: {root}
module_system: lmod
runtime: apptainer
runtime_path: {shim}
env:
  HPCSTACK_CSV: "-Wl,-rpath=/opt/x"
  HPCSTACK_QUOTED: 'say "hi"'
apps:
  - name: gromacs
    version: 2022-apptainer
    image: {gromacs}
    mpi: openmpi
    commands: [gmx, gmx_mpi, printenv]
"""

APPTAINER_JOB = """\
#!/bin/bash
#SBATCH -n 2
#SBATCH -o job.out
module load gromacs/2022-apptainer
gmx grompp -f /opt/water/md.mdp -c /opt/water/conf.gro -p /opt/water/topol.top -o topol.tpr
srun --kill-on-bad-exit=1 --mpi=pmix gmx_mpi mdrun -s topol.tpr -nsteps 200
srun -n 1 printenv APPTAINER_NAME HPCSTACK_CSV HPCSTACK_QUOTED
"""


@pytest.fixture(scope="module")
def apptainer_root(user: User, images: dict[str, Path], apptainer) -> Path:  # type: ignore[no-untyped-def]
    """gromacs deployed with ``runtime: apptainer``; ``runtime_path`` names the site's
    apptainer (here the shim), so jobs reach it whatever their PATH."""
    work = user.workdir("modules-apptainer")
    path = put(user, work / "site.yaml", APPTAINER_SITE.format(
        root=work / "modules", shim=apptainer.shim, gromacs=images["gromacs"]))
    proc = user.hpcstack("modules", "deploy", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    return work / "modules"


def test_apptainer_module_runs_in_apptainer(user: User, apptainer_root: Path, apptainer) -> None:  # type: ignore[no-untyped-def]
    wrapper = next((apptainer_root / "bin").rglob("gmx_mpi")).read_text()
    assert f"exec {apptainer.shim} exec " in wrapper, wrapper
    proc = lmod(user, apptainer_root, """
        module load gromacs/2022-apptainer
        cd ~
        gmx_mpi --version | grep '^GROMACS version'
        printenv APPTAINER_NAME HPCSTACK_CSV HPCSTACK_QUOTED \\
            OMPI_MCA_btl_vader_single_copy_mechanism
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("GROMACS version:    2022.5"), proc.stdout
    assert lines[1].endswith(".sif") and lines[2:] == ["-Wl,-rpath=/opt/x", 'say "hi"', "none"]


def test_apptainer_module_srun_pmix(user: User, apptainer_root: Path,
                                    cluster: slurm_fixture.Slurm) -> None:
    """An unchanged job script: one Apptainer container per rank, Open MPI wired up by
    Slurm's PMIx (the shim keeps the environment; the rendezvous is under /tmp)."""
    out = _sbatch(user, apptainer_root, cluster, user.workdir("modules-apptainer-job"),
                  APPTAINER_JOB)
    assert "Using 2 MPI processes" in out, out[-3000:]
    assert "Performance:" in out
    assert '-Wl,-rpath=/opt/x\nsay "hi"\n' in out


# --- modules check --mpi: every app under every promised launcher -------------------------


def test_check_mpi_table(user: User, site: Path, cluster: slurm_fixture.Slurm) -> None:
    """Open MPI images and the MPICH image with a PMIx build beside Debian's libmpich work
    with all three launchers. Debian's MPICH as packaged only with pmi2: it has no PMIx
    client, so `srun --mpi=pmix` and the host's Open MPI `mpirun` start singletons, and
    the check fails (exit 1) naming them."""
    proc = user.hpcstack("modules", "check", "-c", str(site), "--mpi", "--json",
                         env=cluster.env, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["problems"] == []
    got = {(t["module"], t["launcher"]): t for t in report["mpi"]}
    # A Debian 13 host's mpirun (Open MPI 5, PRRTE) cannot start these Debian 12 images'
    # Open MPI 4 ranks, and says so; test_mpirun_two_ranks runs the host's own build there.
    mismatched = set() if HOST_SUITE == "bookworm" else {("gromacs/2022-cpu", "mpirun"),
                                                         ("lammps/2022-cpu", "mpirun")}
    for module in ("gromacs/2022-cpu", "lammps/2022-cpu", "mpi-hello/mpich-pmix"):
        for launcher in ("pmi2", "pmix", "mpirun"):
            t = got[(module, launcher)]
            if (module, launcher) in mismatched:
                assert not t["works"] and t["detail"].startswith(
                    "the image's Open MPI 4 (ORTE) cannot be started by this host's mpirun"), t
                continue
            assert t["works"] and t["detail"] == "2 ranks", (t, cluster.logs())
    assert got[("mpi-hello/mpich", "pmi2")]["works"], got[("mpi-hello/mpich", "pmi2")]
    for launcher in ("pmix", "mpirun"):
        t = got[("mpi-hello/mpich", launcher)]
        assert not t["works"] and "singletons" in t["detail"], t
    assert len(got) == 12


def test_check_mpi_plain_table_and_one_launcher(user: User, site: Path,
                                                cluster: slurm_fixture.Slurm) -> None:
    proc = user.hpcstack("modules", "check", "-c", str(site), "--mpi", "--launcher", "pmi2",
                         env=cluster.env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert rows[0] == ["module", "pmi2"]
    assert {r[0]: r[1] for r in rows[1:]} == {"gromacs/2022-cpu": "works",
                                              "lammps/2022-cpu": "works",
                                              "mpi-hello/mpich": "works",
                                              "mpi-hello/mpich-pmix": "works"}


def test_check_mpi_bad_launcher_is_one_line(user: User, site: Path) -> None:
    line = _one_line_error(user.hpcstack("modules", "check", "-c", str(site), "--mpi",
                                         "--launcher", "pmi3"))
    assert line.endswith("error: --launcher pmi3: expected one of pmi2, pmix, mpirun"), line


#: docs/modules.md's pair table: each release's MPI images, by the example they are built
#: from and the release they are built for.
PAIR_IMAGES = {
    "openmpi-4.1-bookworm": ("gromacs", "bookworm"),
    "openmpi-5.0-trixie": ("gromacs", "trixie"),
    "mpich-4.0-bookworm": ("mpi-hello-mpich", "bookworm"),
    "mpich-4.0-pmix-bookworm": ("mpi-hello-mpich-pmix", "bookworm"),
    "mpich-4.2-trixie": ("mpi-hello-mpich", "trixie"),
}


@pytest.mark.skipif(not os.environ.get("HPCSTACK_MPI_PAIRS"),
                    reason="measures docs/modules.md's table of host x image MPI pairs (both "
                    "releases' images; minutes of builds): set HPCSTACK_MPI_PAIRS=1")
def test_mpi_pairs_of_host_and_image_releases(user: User, images: dict[str, Path],
                                              cluster: slurm_fixture.Slurm) -> None:
    """Every launcher of this host against both releases' Open MPI and MPICH images, as
    `hpcstack modules check --mpi` sees them; the table is printed for docs/modules.md.
    What holds on both hosts: the image of the host's own release starts under the host's
    mpirun and srun --mpi=pmix, and Debian 12's images under both releases' srun."""
    work = user.workdir("modules-pairs")
    apps = "".join(
        f"  - {{name: pair, version: {version}, image: {build_example(user, example, suite)}, "
        f"mpi: {'openmpi' if example == 'gromacs' else 'mpich'}}}\n"
        for version, (example, suite) in PAIR_IMAGES.items())
    path = put(user, work / "site.yaml", f"root: {work / 'modules'}\nruntime: charliecloud\n"
               f"launchers: [pmi2, pmix, mpirun]\napps:\n{apps}")
    user.hpcstack("modules", "deploy", "-c", str(path), check=True)
    proc = user.hpcstack("modules", "check", "-c", str(path), "--mpi", "--json",
                         env=cluster.env, timeout=1200)
    got = {(t["module"].split("/")[1], t["launcher"]): t for t in json.loads(proc.stdout)["mpi"]}
    mpirun = subprocess.run(["mpirun", "--version"], text=True, capture_output=True).stdout
    print(f"\nhost: {HOST_SUITE}, {mpirun.splitlines()[0]}")
    for version in PAIR_IMAGES:
        print(f"| {version} | " + " | ".join(
            "works" if got[(version, la)]["works"] else got[(version, la)]["detail"][:120]
            for la in ("pmi2", "pmix", "mpirun")) + " |")
    own_ompi = "openmpi-4.1-bookworm" if HOST_SUITE == "bookworm" else "openmpi-5.0-trixie"
    for launcher in ("pmix", "mpirun"):
        assert got[(own_ompi, launcher)]["works"], got[(own_ompi, launcher)]
    for version in ("openmpi-4.1-bookworm", "mpich-4.0-pmix-bookworm"):
        for launcher in ("pmi2", "pmix"):
            assert got[(version, launcher)]["works"], got[(version, launcher)]


# --- lifecycle: list, check, remove -----------------------------------------------------


def test_list_and_check(user: User, site: Path, root: Path) -> None:
    proc = user.hpcstack("modules", "list", "-c", str(site), "--json", check=True)
    rows = {r["module"]: r for r in json.loads(proc.stdout)}
    assert rows["gromacs/2022-cpu"]["commands"] == ["gmx", "gmx_mpi"]
    assert rows["gromacs/2022-cpu"]["default"] is True
    assert rows["lammps/2022-cpu"]["commands"] == ["lmp"]
    proc = user.hpcstack("modules", "check", "-c", str(site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / "lmod" / "gromacs" / ".modulerc.lua").exists()
    assert (root / "tcl" / "gromacs" / ".version").exists()
    assert not list((root / "lmod").rglob("bin")), "wrappers must stay outside MODULEPATH"


# --- 5: bad inputs ----------------------------------------------------------------------


def _site_file(user: User, work: Path, body: str) -> Path:
    return put(user, work / "site.yaml", textwrap.dedent(body))


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_image_writes_nothing(user: User, images: dict[str, Path]) -> None:
    work = user.workdir("modules-bad-missing")
    path = _site_file(user, work, f"""
        root: {work}/modules
        apps:
          - {{name: lammps, version: "1", image: {images['lammps']}, commands: [lmp]}}
          - {{name: gone, version: "1", image: {work}/nowhere.sif, commands: [x]}}
    """)
    line = _one_line_error(user.hpcstack("modules", "deploy", "-c", str(path)))
    assert "gone/1" in line and "nowhere.sif" in line and "not found" in line
    assert not (work / "modules").exists()


def test_two_apps_one_module_name(user: User, images: dict[str, Path]) -> None:
    work = user.workdir("modules-bad-dup")
    path = _site_file(user, work, f"""
        root: {work}/modules
        apps:
          - {{name: lammps, version: "1", image: {images['lammps']}, commands: [lmp]}}
          - {{name: lammps, version: "1", image: {images['gromacs']}, commands: [gmx]}}
    """)
    line = _one_line_error(user.hpcstack("modules", "deploy", "-c", str(path)))
    assert "apps[1]" in line and "lammps/1" in line and "already claimed" in line
    assert not (work / "modules").exists()


def test_schema_error_names_the_field(user: User) -> None:
    work = user.workdir("modules-bad-schema")
    path = _site_file(user, work, """
        apps:
          - {name: lammps, version: "1", image: x.sif, gpu: cuda}
    """)
    line = _one_line_error(user.hpcstack("modules", "deploy", "-c", str(path)))
    assert "site.yaml: apps[0].gpu:" in line


def test_shadowing_a_host_command_warns(user: User, images: dict[str, Path]) -> None:
    work = user.workdir("modules-bad-shadow")
    path = _site_file(user, work, f"""
        root: {work}/modules
        apps:
          - {{name: lammps, version: "1", image: {images['lammps']}, commands: [lmp, ls]}}
    """)
    proc = user.hpcstack("modules", "deploy", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "'ls' shadows" in proc.stderr


def test_image_deleted_after_deploy(user: User, images: dict[str, Path]) -> None:
    work = user.workdir("modules-bad-deleted")
    path = _site_file(user, work, f"""
        root: {work}/modules
        module_system: both
        apps:
          - {{name: lammps, version: "1", image: {images['lammps']}, commands: [lmp]}}
    """)
    user.hpcstack("modules", "deploy", "-c", str(path), check=True)
    state = json.loads((work / "modules" / "state.json").read_text())
    user.run(["rm", "-rf", state["modules"][0]["image"]], check=True)
    proc = lmod(user, work / "modules", "module load lammps/1 && echo loaded")
    assert "loaded" not in proc.stdout
    assert "lammps/1: its container image is missing" in " ".join(proc.stderr.split())
    assert "Lmod has detected the following error" in proc.stderr
    assert "No such file" not in proc.stderr and "command not found" not in proc.stderr
    proc = user.hpcstack("modules", "check", "-c", str(path), "--no-load")
    assert proc.returncode == 1 and "is missing" in proc.stdout


def test_tcl_image_deleted_after_deploy(user: User, images: dict[str, Path],
                                        tcl_modulecmd: Path) -> None:
    work = user.workdir("modules-bad-deleted")  # fresh
    path = _site_file(user, work, f"""
        root: {work}/modules
        apps:
          - {{name: lammps, version: "1", image: {images['lammps']}, commands: [lmp]}}
    """)
    user.hpcstack("modules", "deploy", "-c", str(path), check=True)
    state = json.loads((work / "modules" / "state.json").read_text())
    user.run(["rm", "-rf", state["modules"][0]["image"]], check=True)
    proc = tcl(user, work / "modules", tcl_modulecmd, "module load lammps/1 && echo loaded")
    assert "lammps/1: its container image is missing" in " ".join(proc.stderr.split())
    assert "loaded" not in proc.stdout


def test_remove_and_disable(user: User, images: dict[str, Path]) -> None:
    work = user.workdir("modules-lifecycle")
    body = f"""
        root: {work}/modules
        apps:
          - {{name: lammps, version: "1", image: {images['lammps']}, commands: [lmp]}}
          - {{name: lammps, version: "2", image: {images['lammps']}, commands: [lmp],
              state: {{state}}}}
    """
    path = _site_file(user, work, body.replace("{state}", "default"))
    user.hpcstack("modules", "deploy", "-c", str(path), check=True)
    modules = work / "modules"
    assert len(list((modules / "images").iterdir())) >= 1
    assert "lammps/2" in (modules / "lmod" / "lammps" / ".modulerc.lua").read_text()
    path = _site_file(user, work, body.replace("{state}", "disabled"))
    user.hpcstack("modules", "deploy", "-c", str(path), check=True)
    assert not (modules / "lmod" / "lammps" / "2.lua").exists()
    assert not (modules / "bin" / "lammps" / "2").exists()
    assert not (modules / "lmod" / "lammps" / ".modulerc.lua").exists()
    user.hpcstack("modules", "remove", "-c", str(path), "lammps", check=True)
    assert not (modules / "lmod" / "lammps").exists()
    assert not [p for p in (modules / "images").iterdir() if not p.name.startswith(".")]

