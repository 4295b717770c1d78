"""Where build jobs run: on the service's host (local) or as Slurm batch jobs.

Every build is the same job — ``python -m hpcstack.build.job REQUEST.json``
(:mod:`hpcstack.build.job`), which jails the build and writes a typed result —
so an executor only starts it, reports when it ended, and ends its whole
process tree on cancel.  Handles are strings kept in the database so a
restarted service can find (and clean up or follow) what it started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jinja2 import Environment, PackageLoader

from hpcstack import scheduler
from hpcstack.lifetime import die_with_parent


@dataclass
class Job:
    """One build job: the job runner's ``argv``, run in ``cwd``, its output appended to ``log``."""

    key: str
    argv: list[str]
    cwd: Path
    log: Path
    time_limit: float = 3600.0


class Executor(Protocol):
    name: str

    def start(self, job: Job) -> str: ...

    def poll(self, handle: str) -> int | None: ...

    def cancel(self, handle: str) -> None: ...

    def alive(self, handle: str) -> bool: ...


class LocalExecutor:
    """Jobs as child processes of the service, each leading its own process group."""

    name = "local"

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, job: Job) -> str:
        with open(job.log, "ab") as log:
            proc = subprocess.Popen(job.argv, cwd=job.cwd, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True,
                                    preexec_fn=die_with_parent)
        handle = f"local:{proc.pid}"
        self.procs[handle] = proc
        return handle

    def poll(self, handle: str) -> int | None:
        proc = self.procs.get(handle)
        if proc is None:
            return None if self.alive(handle) else -1
        status = proc.poll()
        if status is not None:
            del self.procs[handle]
            self._signal(proc.pid, signal.SIGKILL)  # anything the job left behind
        return status

    def cancel(self, handle: str) -> None:
        """SIGTERM to the whole group (the job cleans up), SIGKILL after 10 s."""
        pid = int(handle.split(":", 1)[1])
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._group_alive(pid):
            proc = self.procs.get(handle)
            if proc is not None:
                proc.poll()
            time.sleep(0.1)
        self._signal(pid, signal.SIGKILL)

    def alive(self, handle: str) -> bool:
        return self._group_alive(int(handle.split(":", 1)[1]))

    def adopt(self, handle: str) -> None:
        """A job from before a restart: end what is left of its process group."""
        pid = int(handle.split(":", 1)[1])
        if self._group_alive(pid):
            self.cancel(handle)

    @staticmethod
    def _signal(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


class SlurmExecutor:
    """Each job is a batch job on the build partition, through :mod:`hpcstack.scheduler`."""

    name = "slurm"

    def __init__(self, partition: str | None = None) -> None:
        self.partition = partition
        self.templates = Environment(loader=PackageLoader("hpcstack.service"),
                                     keep_trailing_newline=True)

    def script(self, job: Job) -> str:
        return self.templates.get_template("slurm-build.sh.j2").render(
            job=job, argv=shlex.join(job.argv))

    def start(self, job: Job) -> str:
        script = job.cwd / f".u2cb-{job.key}.sbatch"
        script.write_text(self.script(job))
        minutes = max(1, int(job.time_limit // 60) + 1)
        args = [f"--job-name=u2cb-{job.key}", f"--output={job.log}", f"--time={minutes}",
                "--open-mode=append"]
        if self.partition:
            args.append(f"--partition={self.partition}")
        return f"slurm:{scheduler.submit(script, cwd=job.cwd, args=args)}"

    def poll(self, handle: str) -> int | None:
        ended = scheduler.state(self._id(handle))
        if ended is None:
            return None
        if ended.state == "COMPLETED":
            return ended.exit_code
        return ended.exit_code or 1

    def cancel(self, handle: str) -> None:
        scheduler.cancel(self._id(handle), "TERM")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.alive(handle):
            time.sleep(0.5)
        scheduler.cancel(self._id(handle))

    def alive(self, handle: str) -> bool:
        return scheduler.state(self._id(handle)) is None

    def adopt(self, handle: str) -> None:
        """A Slurm job outlives the service: nothing to clean, it is followed again."""

    @staticmethod
    def _id(handle: str) -> int:
        return int(handle.split(":", 1)[1])


def make_executor(name: str, partition: str | None = None) -> LocalExecutor | SlurmExecutor:
    if name == "local":
        return LocalExecutor()
    if name == "slurm":
        return SlurmExecutor(partition)
    raise ValueError(f"executor {name!r}: use local or slurm")
