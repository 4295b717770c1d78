"""Where builds run: on the service's host (local) or as Slurm batch jobs.

An executor starts a job, reports its exit status once it ended, and ends its
whole process tree on cancel.  Handles are strings kept in the database so a
restarted service can find (and clean up or follow) what it started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from jinja2 import Environment, PackageLoader


@dataclass
class Job:
    """One build: an argv run in ``cwd`` with its output appended to ``log``."""

    key: str
    argv: list[str]
    cwd: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    time_limit: float = 3600.0


def build_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "hpcstack.service.worker", *args]


class Executor(Protocol):
    name: str

    def start(self, job: Job) -> str: ...

    def poll(self, handle: str) -> int | None: ...

    def cancel(self, handle: str) -> None: ...

    def alive(self, handle: str) -> bool: ...


class LocalExecutor:
    """Builds as child processes of the service, each leading its own process group."""

    name = "local"

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, job: Job) -> str:
        env = {**os.environ, **job.env}
        with open(job.log, "ab") as log:
            proc = subprocess.Popen([*job.argv, "--die-with-parent"], cwd=job.cwd,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True)
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
            self._reap_group(proc.pid)
        return status

    def cancel(self, handle: str) -> None:
        """SIGTERM to the whole group (the builder cleans up), SIGKILL after 10 s."""
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
        """A build from before a restart: end what is left of its process group."""
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

    def _reap_group(self, pgid: int) -> None:
        self._signal(pgid, signal.SIGKILL)  # anything the build left behind


class SlurmExecutor:
    """Each build is a batch job on the build partition, followed with squeue/sacct."""

    name = "slurm"
    TERMINAL_OK = frozenset({"COMPLETED"})

    def __init__(self, partition: str | None = None) -> None:
        self.partition = partition
        self.templates = Environment(loader=PackageLoader("hpcstack.service"),
                                     keep_trailing_newline=True)

    def script(self, job: Job) -> str:
        return self.templates.get_template("slurm-build.sh.j2").render(
            job=job, argv=shlex.join(job.argv), cwd=shlex.quote(str(job.cwd)),
            env={k: shlex.quote(v) for k, v in job.env.items()})

    def start(self, job: Job) -> str:
        script = job.cwd / f".u2cb-{job.key}.sbatch"
        script.write_text(self.script(job))
        minutes = max(1, int(job.time_limit // 60) + 1)
        argv = ["sbatch", "--parsable", f"--job-name=u2cb-{job.key}", f"--output={job.log}",
                f"--time={minutes}", f"--chdir={job.cwd}", "--export=ALL",
                "--open-mode=append"]
        if self.partition:
            argv.append(f"--partition={self.partition}")
        out = subprocess.run([*argv, str(script)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
        return f"slurm:{out.strip().split(';')[0]}"

    def _state(self, jobid: str) -> tuple[str, int] | None:
        """None while the job is pending or running; else (final state, exit status).

        ``scontrol`` knows a finished job for ``MinJobAge``; ``sacct`` after that,
        where accounting is on.
        """
        q = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True,
                           text=True, timeout=30)
        if q.returncode == 0 and "JobState=" in q.stdout:
            fields = dict(f.split("=", 1) for f in q.stdout.split() if "=" in f)
            state = fields.get("JobState", "UNKNOWN")
            if state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"):
                return None
            return state, int(fields.get("ExitCode", "1:0").split(":")[0] or 1)
        a = subprocess.run(["sacct", "-n", "-X", "-P", "-j", jobid, "-o", "State,ExitCode"],
                           capture_output=True, text=True, timeout=30)
        line = a.stdout.strip().splitlines()[0] if a.stdout.strip() else ""
        if not line:
            return ("UNKNOWN", -1)
        state, _, code = line.partition("|")
        if state.split()[0] in ("PENDING", "RUNNING"):
            return None
        return state.split()[0], int(code.split(":")[0] or 0)

    def poll(self, handle: str) -> int | None:
        got = self._state(handle.split(":", 1)[1])
        if got is None:
            return None
        state, status = got
        if state in self.TERMINAL_OK:
            return status
        return status or 1

    def cancel(self, handle: str) -> None:
        subprocess.run(["scancel", "--signal=TERM", "--full", handle.split(":", 1)[1]],
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.alive(handle):
            time.sleep(0.5)
        subprocess.run(["scancel", handle.split(":", 1)[1]], capture_output=True, timeout=30)

    def alive(self, handle: str) -> bool:
        return self._state(handle.split(":", 1)[1]) is None

    def adopt(self, handle: str) -> None:
        """A Slurm job outlives the service: nothing to clean, it is followed again."""


def make_executor(name: str, partition: str | None = None) -> LocalExecutor | SlurmExecutor:
    if name == "local":
        return LocalExecutor()
    if name == "slurm":
        return SlurmExecutor(partition)
    raise ValueError(f"executor {name!r}: use local or slurm")
