"""Running hpcc: the same input, three ways, round after round in rotating order.

* ``bare``    - the host's ``hpcc``;
* ``module``  - the wrapper ``module load`` puts on ``PATH`` (what users' job scripts run);
* ``runtime`` - the runtime's own command line (``ch-run …``), no wrapper.

With ``ranks > 1`` each mode is started by the host's ``mpirun`` (``srun --mpi=pmix``
inside a Slurm job): one container per rank, the hybrid model.  The modes share a
working directory and input file; ``hpccoutf.txt`` is removed before each run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcstack.bench.hpcc import figures, parse_summary
from hpcstack.bench.stats import rotation
from hpcstack.errors import UserError
from hpcstack.runtime import Launch, Runtime

MODES = ("bare", "module", "runtime")
#: Open MPI's CMA single-copy path hangs across per-rank user namespaces (DESIGN.md).
CMA_FIX = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
#: One BLAS thread per rank in every mode, whatever the BLAS flavour.
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Command:
    """What one mode starts: argv and its complete environment."""

    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Run:
    """One hpcc run: its mode, round, wall time and the table's figures."""

    mode: str
    round: int
    seconds: float
    figures: dict[str, float]


def launcher(ranks: int, environ: dict[str, str]) -> list[str]:
    """The host's MPI launcher for ``ranks`` processes ([] for one: hpcc starts alone)."""
    if ranks == 1:
        return []
    if environ.get("SLURM_JOB_ID"):
        return ["srun", "--mpi=pmix", f"--ntasks={ranks}"]
    extra = ["--oversubscribe"] if ranks > (os.cpu_count() or 1) else []
    return ["mpirun", "-np", str(ranks), *extra]


def base_env() -> dict[str, str]:
    env = dict(os.environ) | THREADS
    if os.geteuid() == 0:  # a site admin running it as root: let mpirun start
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return env


def commands(hpcc: Path, wrapper: Path, runtime: Runtime, image: Path, workdir: Path,
             ranks: int) -> dict[str, Command]:
    """The three modes' commands; the runtime's is computed once, as a wrapper's is."""
    env = base_env()
    start = launcher(ranks, env)
    inside = CMA_FIX if ranks > 1 else {}
    rt = runtime.__class__(env)
    plan = rt.command(Launch("exec", image, ["hpcc"], env=inside | THREADS, cwd=workdir))
    return {
        "bare": Command([*start, str(hpcc)], env),
        "module": Command([*start, str(wrapper)], env),
        "runtime": Command([*start, *plan.argv], plan.env),
    }


def run_once(cmd: Command, workdir: Path, mode: str, rnd: int, timeout: float) -> Run:
    """Run hpcc once in ``workdir``; its figures (a failed run is the user's error)."""
    out = workdir / "hpccoutf.txt"
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd.argv, env=cmd.env, cwd=workdir, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"{mode}: hpcc ran over {timeout:.0f} s (round {rnd})") from None
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output")[-600:]
        raise UserError(f"{mode}: hpcc exited {proc.returncode} (round {rnd}): {tail}")
    summary = parse_summary(out.read_text(), f"{mode} round {rnd}: {out}")
    return Run(mode, rnd, seconds, figures(summary))


def rounds(cmds: dict[str, Command], workdir: Path, count: int, timeout: float,
           step: Callable[[str, int], None]) -> list[list[Run]]:
    """``count`` rounds, the order of modes rotating each round; ``step`` before each run."""
    done: list[list[Run]] = []
    for rnd, order in enumerate(rotation(list(cmds), count), start=1):
        this = []
        for mode in order:
            step(mode, rnd)
            this.append(run_once(cmds[mode], workdir, mode, rnd, timeout))
        done.append(this)
    return done
