"""A real single-node Slurm (slurmctld + slurmd) with its own MUNGE, for tests.

Everything lives in one temporary directory under ``/tmp`` (so containers that
bind the host's ``/tmp`` see Slurm's PMIx rendezvous files): the MUNGE key and
socket, ``slurm.conf``, state, spool and logs.  Daemons run as root (they must,
to start jobs as the test user) on free ports; clients find them through
``SLURM_CONF``.  ``stop()`` ends exactly the processes it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = """\
ClusterName=hpcstack-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slurm:
    """A running test cluster; ``env`` is what Slurm's client commands need."""

    dir: Path
    conf: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def client(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **self.env), check=False)

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.dir / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start(cpus: int = 4, timeout: float = 30) -> Slurm:
    """Start MUNGE, slurmctld and slurmd; return once the node is idle."""
    base = Path(tempfile.mkdtemp(prefix="hpcstack-slurm-", dir="/tmp"))
    base.chmod(0o755)
    for sub in ("state", "spool"):
        (base / sub).mkdir()
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = base / "munge.socket"
    conf = base / "slurm.conf"
    conf.write_text(SLURM_CONF.format(ctld_port=_free_port(), slurmd_port=_free_port(),
                                      munge_socket=munge_socket, dir=base, cpus=cpus))
    conf.chmod(0o644)
    # PMIx's per-step client directories (spmix_appdir_UID_JOB.STEP) in this cluster's own
    # tree: left in /tmp by a step that was killed, they make the next cluster's step of
    # the same number fail to launch ("File exists"); every test cluster starts at job 1.
    (base / "pmix").mkdir()
    (base / "pmix").chmod(0o1777)
    (base / "mpi.conf").write_text(f"PMIxCliTmpDirBase={base}/pmix\n")
    (base / "mpi.conf").chmod(0o644)
    cluster = Slurm(base, conf)
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        cluster.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={munge_socket}",
             f"--key-file={key}", f"--pid-file={base}/munged.pid",
             f"--log-file={base}/munged.log", f"--seed-file={base}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: munge_socket.exists(), timeout, "munged", cluster)
        cluster.procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)],
                                              env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        cluster.procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env,
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))

        def idle() -> bool:
            proc = cluster.client("sinfo", "-h", "-o", "%t")
            return proc.returncode == 0 and proc.stdout.strip() in ("idle", "mix")

        _wait_for(idle, timeout, "slurm node idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(ready, timeout: float, what: str, cluster: Slurm) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}\n{cluster.logs()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s\n{cluster.logs()}")
        time.sleep(0.1)
