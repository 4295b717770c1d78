"""CI guard: every MPI launcher the example site file promises works on the test Slurm.

A missing system package (``libpmix-dev``: Slurm's PMIx plugin dlopens the unversioned
``libpmix.so``) once hid behind a machine that happened to have it. This test reads the
launchers ``examples/modules/site.yaml`` promises and, for each ``srun --mpi=`` one,
checks that ``srun --mpi=list`` offers it and that a 2-task step starts with it; for
``mpirun`` that the host has one. It fails with one line naming the package to install.
"""

from __future__ import annotations

import re
import shutil

import pytest

import slurm as slurm_fixture
from conftest import REPO, User
from hpcstack.modules import load_site
from hpcstack.modules.mpicheck import NEEDS

pytestmark = pytest.mark.integration

SITE = REPO / "examples" / "modules" / "site.yaml"


def test_example_site_promises_launchers() -> None:
    assert load_site(SITE).launchers == ["pmi2", "pmix", "mpirun"]


def test_slurm_has_every_promised_launcher(user: User, cluster: slurm_fixture.Slurm) -> None:
    listing = cluster.client("srun", "--mpi=list")
    offered = set(re.findall(r"^\s+(\w+)\s*$", listing.stdout + listing.stderr, re.M))
    missing = []
    for launcher in load_site(SITE).launchers:
        if launcher == "mpirun":
            if shutil.which("mpirun") is None:
                missing.append(f"the host lacks mpirun: install {NEEDS['mpirun']}")
            continue
        if launcher not in offered:
            missing.append(f"Slurm lacks --mpi={launcher}: install {NEEDS[launcher]}")
            continue
        step = user.run(["srun", f"--mpi={launcher}", "-n", "2", "true"], env=cluster.env,
                        timeout=120)
        if step.returncode != 0:
            first = (step.stderr.strip().splitlines() or ["?"])[0]
            missing.append(f"Slurm's --mpi={launcher} cannot start a step ({first}): install "
                           f"{NEEDS[launcher]}")
    if missing:
        pytest.fail("; ".join(missing), pytrace=False)
