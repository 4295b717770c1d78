"""Submitting and following Slurm jobs through Slurm's own commands."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcstack.errors import UserError

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _default_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


@dataclass(frozen=True)
class JobResult:
    job_id: int
    state: str
    exit_code: int
    signal: int
    fields: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0


def _call(run: Runner, argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return run(argv)
    except FileNotFoundError:
        raise UserError(f"{argv[0]}: not found (is Slurm installed?)") from None


def submit(script: Path, *, cwd: Path | None = None, args: Sequence[str] = (),
           run: Runner | None = None) -> int:
    """Submit ``script`` with ``sbatch``; its job id."""
    argv = ["sbatch", "--parsable", *args]
    if cwd is not None:
        argv.append(f"--chdir={cwd}")
    proc = _call(run or _default_runner, [*argv, str(script)])
    if proc.returncode != 0:
        raise UserError(f"sbatch {script}: {(proc.stderr.strip() or 'failed').splitlines()[-1]}")
    match = re.match(r"(\d+)", proc.stdout.strip())
    if not match:
        raise UserError(f"sbatch {script}: unexpected answer {proc.stdout.strip()!r}")
    return int(match.group(1))


def job_info(job_id: int, run: Runner | None = None) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (empty once Slurm has forgotten the job)."""
    proc = _call(run or _default_runner, ["scontrol", "show", "job", "-o", str(job_id)])
    if proc.returncode != 0:
        return {}
    fields: dict[str, str] = {}
    for token in proc.stdout.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def cancel(job_id: int, run: Runner | None = None) -> None:
    """``scancel`` the job (nothing happens when it has ended already)."""
    _call(run or _default_runner, ["scancel", str(job_id)])


def wait(job_id: int, *, timeout: float = 600, poll: float = 0.5,
         run: Runner | None = None) -> JobResult:
    """Wait until the job ends; a :class:`JobResult` (``UserError`` on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job_info(job_id, run)
        state = fields.get("JobState", "UNKNOWN")
        if state in FINAL:
            code, _, sig = fields.get("ExitCode", "0:0").partition(":")
            return JobResult(job_id, state, int(code or 0), int(sig or 0), fields)
        if time.monotonic() > deadline:
            raise UserError(f"job {job_id}: still {state} after {timeout:.0f} s")
        time.sleep(poll)
