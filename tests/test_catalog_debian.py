"""The Debian-package catalog end to end, as the unprivileged user (acceptance 2, 3, 4).

``examples/catalog/debian.yaml`` (plus a tiny ``probe`` app this module adds, so
that "change one app" is cheap) is built with ``hpcstack catalog build`` into a
directory kept in the user's home: a later session finds the images there and
rebuilds nothing (a fresh machine builds everything: about three minutes).
Then the images are published as modules and loaded with the real Lmod.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import REPO, User, need
from hpcstack.modules.image import inspect

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "catalog" / "debian.yaml"
LMOD_INIT = "/usr/share/lmod/lmod/init/bash"
PROBE = """
  - name: probe
    version: "1"
    base: debian
    multistage: false
    build:
      - mkdir -p /opt/probe/bin
      - printf '#!/bin/sh\\necho probe $PROBE\\n' > /opt/probe/bin/probe
      - chmod 755 /opt/probe/bin/probe
    env: {{PROBE: "{nonce}"}}
    commands: [probe]
    tests: [probe | grep -q probe]
"""
APPS = ["gromacs-2022.5-x86_64", "lammps-20220106-x86_64", "mpi-hello-1.0-x86_64",
        "probe-1-x86_64"]
BASE = "debian12.gcc-12.ompi-4.1.x86_64"


def put(user: User, path: Path, text: str) -> Path:
    user.run(["sh", "-c", f"cat > {path}"], input=text, check=True)
    return path


def catalog_build(user: User, work: Path, catalog: str = "catalog.yaml") -> dict:
    proc = user.hpcstack("catalog", "build", "-c", catalog, "-o", "images", "--json", cwd=work,
                         timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def work(user: User) -> Path:
    need("mmdebstrap", "unshare", "mksquashfs", "siftool", "unsquashfs")
    path = user.home / "work" / "catalog-debian"
    user.run(["mkdir", "-p", str(path)], check=True)
    put(user, path / "catalog.yaml", EXAMPLE.read_text() + PROBE.format(nonce="fixed"))
    return path


@pytest.fixture(scope="module")
def first(user: User, work: Path) -> dict:
    """The first build of this session (everything, or nothing when a session built it)."""
    return catalog_build(user, work)


def images(work: Path) -> Path:
    return work / "images"


# --- acceptance 2: base -> apps, tests inside, publish, module load ---------------------


def test_build_base_and_apps(work: Path, first: dict) -> None:
    assert set(first["built"]) | set(first["skipped"]) == {BASE, *APPS}
    state = json.loads((images(work) / "state.json").read_text())
    for tag in [BASE, *APPS]:
        assert (images(work) / f"{tag}.sif").is_file()
        assert state[tag]["base"] == (None if tag == BASE else BASE)
    labels = inspect(images(work) / "gromacs-2022.5-x86_64.sif", listing=False).labels
    assert labels["hpcstack.base"] == BASE and labels["hpcstack.cpu_target"] == "x86_64"
    assert labels["hpcstack.commands"] == "gmx gmx_mpi"


def test_catalog_tests_run_inside_the_images(user: User, work: Path, first: dict) -> None:
    """They ran as %test during the build; here they run again through the runtime."""
    need("ch-run")
    for tag, tests in (("gromacs-2022.5-x86_64", ["gmx --version | grep -q 'GROMACS version'",
                                                   "test -x /usr/bin/gmx_mpi"]),
                       ("mpi-hello-1.0-x86_64", ["mpi-hello"])):
        for test in tests:
            proc = user.hpcstack("exec", str(images(work) / f"{tag}.sif"), "sh", "-c", test,
                                 cwd=work)
            assert proc.returncode == 0, f"{tag}: {test}: {proc.stderr[-2000:]}"
    proc = user.hpcstack("exec", str(images(work) / "mpi-hello-1.0-x86_64.sif"), "mpi-hello")
    assert proc.stdout.strip() == "hello from rank 0 of 1"


def test_failing_catalog_test_fails_the_build(user: User, work: Path, first: dict) -> None:
    text = (work / "catalog.yaml").read_text().replace("tests: [probe | grep -q probe]",
                                                       "tests: ['false']")
    put(user, work / "failing.yaml", text)
    proc = user.hpcstack("catalog", "build", "-c", "failing.yaml", "-o", "failing", "--only",
                         "probe", cwd=work, timeout=600)
    assert proc.returncode != 0
    assert not (work / "failing" / "probe-1-x86_64.sif").exists()


def test_publish_deploys_modules_and_gmx_mpi_runs(user: User, work: Path, first: dict) -> None:
    need("ch-run", "bash")
    if not Path(LMOD_INIT).exists():
        pytest.skip("Lmod is not installed")
    site = work / "site.yaml"
    put(user, site, "module_system: lmod\napps:\n  - {name: other, version: '1', image: "
        "/nonexistent.sif, state: disabled}\n")
    proc = user.hpcstack("catalog", "publish", "-c", "catalog.yaml", "-o", "images", "--site",
                         str(site), "--root", str(work / "modules"), cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deployed gromacs/2022.5-x86_64: gmx gmx_mpi" in proc.stderr
    published = site.read_text()
    assert "name: other" in published and "version: 2022.5-x86_64" in published
    script = f"""
        source {LMOD_INIT}
        export MODULEPATH={work}/modules/lmod
        cd ~
        module load gromacs/2022.5-x86_64
        gmx_mpi --version | grep -E '^(GROMACS version|MPI library)'
        module load mpi-hello/1.0-x86_64 lammps/20220106-x86_64
        mpi-hello
        command -v lmp
    """
    proc = user.run(["bash", "-c", textwrap.dedent(script)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"GROMACS version:\s+2022.5", proc.stdout)
    assert re.search(r"MPI library:\s+MPI", proc.stdout)
    assert "hello from rank 0 of 1" in proc.stdout
    assert proc.stdout.strip().endswith("/bin/lammps/20220106-x86_64/lmp")


# --- acceptance 3: the runtime stage has no compiler and is smaller ----------------------


def test_runtime_image_is_slim(user: User, work: Path, first: dict) -> None:
    tag = "mpi-hello-1.0-x86_64"
    recipe = (images(work) / "recipes" / f"{tag}.def").read_text()
    head, build_stage, _runtime = re.split(r"(?m)^(?=Bootstrap:)", recipe)
    build_stage = head + build_stage
    deffile, sif = work / "build-stage.def", work / "build-stage.sif"
    if not (sif.exists() and deffile.exists() and deffile.read_text() == build_stage):
        put(user, deffile, build_stage)
        proc = user.hpcstack("build", "-q", "-F", str(sif), str(deffile), cwd=work, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    # gcc's drivers and the compiler proper (cc1); Open MPI's mpicc wrapper is in
    # openmpi-bin, but without gcc it compiles nothing.
    compilers = re.compile(r"/usr/bin/(gcc|cc|g\+\+|c\+\+|x86_64-linux-gnu-gcc)(-\d+)?\Z"
                           r"|.*/cc1(plus)?\Z")
    runtime = inspect(images(work) / f"{tag}.sif", listing=True)
    build = inspect(sif, listing=True)
    assert [p for p in build.executables if compilers.match(p)], "the build stage has gcc"
    assert not [p for p in runtime.executables if compilers.match(p)]
    assert "/opt/mpi-hello/bin/mpi-hello" in runtime.executables
    sizes = {"build stage": sif.stat().st_size,
             "runtime": (images(work) / f"{tag}.sif").stat().st_size}
    print(f"\n{tag}: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    assert sizes["runtime"] < sizes["build stage"]


# --- acceptance 4: nothing changed, nothing built; one app changed, one rebuilt ----------


def test_second_build_does_no_work(user: User, work: Path, first: dict) -> None:
    again = catalog_build(user, work)
    assert again["built"] == [] and sorted(again["skipped"]) == sorted([BASE, *APPS])


def test_changing_one_app_rebuilds_only_it(user: User, work: Path, first: dict) -> None:
    before = {t: (images(work) / f"{t}.sif").stat().st_mtime_ns for t in [BASE, *APPS]}
    nonce = uuid.uuid4().hex[:8]
    put(user, work / "catalog.yaml", EXAMPLE.read_text() + PROBE.format(nonce=nonce))
    changed = catalog_build(user, work)
    assert changed["built"] == ["probe-1-x86_64"]
    assert sorted(changed["skipped"]) == sorted([BASE, *APPS[:3]])
    after = {t: (images(work) / f"{t}.sif").stat().st_mtime_ns for t in [BASE, *APPS]}
    assert [t for t in before if before[t] != after[t]] == ["probe-1-x86_64"]
    proc = user.hpcstack("exec", str(images(work) / "probe-1-x86_64.sif"), "probe")
    assert proc.stdout.strip() == f"probe {nonce}"


def test_slurm_builds_what_changed_as_batch_jobs(user: User, work: Path, first: dict,
                                                 cluster) -> None:  # type: ignore[no-untyped-def]
    """``catalog build --slurm``: one ``sbatch`` job per image to build, on the real Slurm."""
    nonce = uuid.uuid4().hex[:8]
    put(user, work / "catalog.yaml", EXAMPLE.read_text() + PROBE.format(nonce=nonce))
    proc = user.hpcstack("catalog", "build", "-c", "catalog.yaml", "-o", "images", "--slurm",
                         "--json", cwd=work, env=cluster.env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:] + cluster.logs()
    report = json.loads(proc.stdout)
    assert report["built"] == ["probe-1-x86_64"]
    job = re.search(r"submitted probe-1-x86_64 as job (\d+)", proc.stderr)
    assert job, proc.stderr
    info = cluster.client("scontrol", "show", "job", "-o", job.group(1)).stdout
    assert "JobState=COMPLETED" in info and f"UserId={user.name}(" in info, info
    assert (images(work) / "jobs" / "probe-1-x86_64.log").is_file()
    proc = user.hpcstack("exec", str(images(work) / "probe-1-x86_64.sif"), "probe")
    assert proc.stdout.strip() == f"probe {nonce}"
