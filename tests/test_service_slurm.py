"""The Slurm executor: the same definition built as a batch job on a real single-node Slurm.

The cluster comes from ``tests/slurm.py`` (slurmctld + slurmd with MUNGE); the
service submits with ``sbatch`` as its own account and follows the job with
``scontrol``/``sacct``; the job's output file is the build log.
"""

from __future__ import annotations

import json

import pytest

from conftest import User
from test_service import SCRATCH_DEF, Service, account, data_dir, munge, put  # noqa: F401

pytestmark = pytest.mark.integration


def test_definition_built_as_a_slurm_job(cluster, account: User, munge,  # noqa: F811
                                         user: User) -> None:
    svc = Service(account, munge, data_dir(account, "slurm"), "--executor", "slurm",
                  env=cluster.env).start()
    try:
        work = user.workdir("u2cb-slurm")
        put(user, work / "data.txt", "via slurm\n")
        put(user, work / "t.def", SCRATCH_DEF.format(setup="true"))
        proc = svc.u2cb(user, "defcreate", "-n", "viaslurm", "-d", "t.def", cwd=work,
                        timeout=300)
        assert proc.returncode == 0, proc.stderr + svc.log.read_text()[-2000:]
        status = json.loads(svc.u2cb(user, "status", "-n", "viaslurm", "--json",
                                     check=True).stdout)
        assert status["state"] == "ready" and len(status["sha256"]) == 64
        log = svc.u2cb(user, "logs", "-n", "viaslurm", check=True).stdout
        assert "u2cb: build of viaslurm started" in log and "Built " in log, log
        jobs = cluster.client("scontrol", "-o", "show", "job").stdout
        assert "JobName=u2cb-" in jobs and "JobState=COMPLETED" in jobs, jobs
        svc.u2cb(user, "download", "-n", "viaslurm", cwd=work, check=True)
        assert (work / "viaslurm.sif").stat().st_size > 0
    finally:
        svc.stop()
