"""The Slurm executor: the same definition built as a batch job on a real single-node Slurm.

The cluster comes from ``tests/slurm.py`` (slurmctld + slurmd with MUNGE); the
service submits with ``sbatch`` as its own account and follows the job with
``scontrol``/``sacct``; the job's output file is the build log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import User
from test_service import SCRATCH_DEF, Service, account, data_dir, munge, put  # noqa: F401

pytestmark = pytest.mark.integration


def slurm_service(cluster, account: User, munge, name: str) -> Service:  # noqa: F811
    """The service as ``account`` with the Slurm executor, on a data directory of its own."""
    return Service(account, munge, data_dir(account, name), "--executor", "slurm",
                   env=cluster.env).start()


def scratch_work(user: User, name: str, setup: str) -> Path:
    """A work directory with SCRATCH_DEF as ``t.def`` (running ``setup``) and its data file."""
    work = user.workdir(name)
    put(user, work / "data.txt", "d\n")
    put(user, work / "t.def", SCRATCH_DEF.format(setup=setup))
    return work


def test_definition_built_as_a_slurm_job(cluster, account: User, munge,  # noqa: F811
                                         user: User) -> None:
    svc = slurm_service(cluster, account, munge, "slurm")
    try:
        work = scratch_work(user, "u2cb-slurm", "true")
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


def test_restarted_service_follows_its_running_slurm_job(cluster, account: User,  # noqa: F811
                                                         munge, user: User) -> None:  # noqa: F811
    """kill -9 of the service leaves a Slurm build running; the restarted service
    follows the same job to the end instead of re-queueing it."""
    svc = slurm_service(cluster, account, munge, "slurm-restart")
    try:
        work = scratch_work(user, "u2cb-slurm-restart", "sleep 8")
        svc.u2cb(user, "defcreate", "--detach", "-n", "long", "-d", "t.def", cwd=work,
                 check=True)
        job = None
        deadline = time.monotonic() + 60
        while job is None:
            assert time.monotonic() < deadline, cluster.client("squeue").stdout
            queue = cluster.client("squeue", "-h", "-t", "RUNNING", "-o", "%i %j").stdout
            job = next((line.split()[0] for line in queue.splitlines()
                        if line.split()[1].startswith("u2cb-")), None)
            time.sleep(0.3)
        svc.kill9()
        svc.start()
        svc.u2cb(user, "logs", "-n", "long", "-f", check=True, timeout=120)
        status = json.loads(svc.u2cb(user, "status", "-n", "long", "--json",
                                     check=True).stdout)
        assert (status["state"], status["attempts"]) == ("ready", 1), status
        info = cluster.client("scontrol", "-o", "show", "job", job).stdout
        assert "JobState=COMPLETED" in info, info
    finally:
        svc.stop()
