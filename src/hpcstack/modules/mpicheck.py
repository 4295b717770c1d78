"""``hpcstack modules check --mpi``: does each promised launcher start each MPI app?

For every deployed app with ``mpi: openmpi|mpich`` and every launcher the site file
promises (``launchers: [pmi2, pmix, mpirun]``), one Slurm batch job loads the module
and starts the app's MPI hello (the ``hpcstack-mpi-hello`` wrapper deploy writes for
MPI apps) on 2 ranks, the way a user's job script would::

    module load gromacs/2022-cpu
    srun --mpi=pmi2 hpcstack-mpi-hello          # or srun --mpi=pmix, or mpirun -np 2

A launcher works for an app when the job completes and every rank reports a world of
the right size (``hello from rank R of N``). Ranks that each see a world of 1 are
singletons: the image's MPI did not talk to the launcher (MPICH under
``srun --mpi=pmix``, say), and that fails too. Jobs go through the project's one Slurm
client (:mod:`hpcstack.scheduler`); the job script is the ``mpi-check.sh.j2`` template.

Pure parts (:func:`job_script`, :func:`verdict`) are apart from :func:`check_mpi`, which
submits and waits.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import jinja2

from hpcstack.errors import UserError
from hpcstack.modules.config import HELLO_COMMAND, App, Site
from hpcstack.modules.render import Layout

#: What each launcher needs on the nodes, for a reason an admin can act on.
NEEDS = {
    "pmix": "libpmix-dev (Slurm's PMIx plugin dlopens libpmix.so)",
    "pmi2": "slurm-wlm-basic-plugins (Slurm's mpi/pmi2 plugin)",
    "mpirun": "openmpi-bin (the host's mpirun)",
}

HELLO = re.compile(r"hello from rank (\d+) of (\d+)")
#: Open MPI 4's ranks (ORTE) started by Open MPI 5's mpirun (PRRTE), as on a Debian 13
#: host with Debian 12 images: ``orte_init`` fails before MPI_Init returns.
ORTE_UNDER_PRRTE = re.compile(r"ORTE_SUCCESS|orte_init failed|orte_ess_init failed")
OPEN_MPI_MISMATCH = ("the image's Open MPI 4 (ORTE) cannot be started by this host's mpirun "
                     "(Open MPI 5, PRRTE): use srun --mpi=pmix, or build the image for the "
                     "host's release (docs/modules.md)")
ERROR_WORDS = re.compile(r"error|abort|fail|cannot|can not|unable|not found|denied|killed",
                         re.IGNORECASE)


def launch_line(launcher: str, ranks: int) -> str:
    """The command a job script starts ranks with."""
    if launcher == "mpirun":
        return f"mpirun -np {ranks}"
    return f"srun --mpi={launcher} -n {ranks}"


@cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hpcstack.modules", "templates"),
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["q"] = shlex.quote
    return env


def job_script(*, module: str, modulepath: str, launcher: str, hello: str, output: str,
               ranks: int = 2, partition: str | None = None, timeout: float = 300,
               lmod_init: str | None = None, modulecmd: list[str] | None = None) -> str:
    """The batch script that loads ``module`` and starts its hello with ``launcher``."""
    if not lmod_init and not modulecmd:
        raise UserError("modules check --mpi: neither Lmod nor Environment Modules found")
    return _templates().get_template("mpi-check.sh.j2").render(
        module=module, modulepath=modulepath, launch=launch_line(launcher, ranks),
        hello=hello, output=output, ranks=ranks, partition=partition,
        minutes=max(1, math.ceil(timeout / 60)), lmod_init=lmod_init,
        modulecmd=shlex.join(modulecmd or []))


def first_error(text: str) -> str:
    """The line of a job's output that best says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and ln.strip("-*= ") and not ln.startswith("hpcstack-mpi-check:")
             and not HELLO.search(ln)]
    for line in lines:
        if ERROR_WORDS.search(line):
            return line
    return lines[0] if lines else ""


def verdict(output: str, ranks: int, job_ok: bool, job_state: str = "") -> tuple[bool, str]:
    """(works, detail) from a finished job's output."""
    hellos = [(int(r), int(n)) for r, n in HELLO.findall(output)]
    if job_ok and sorted(hellos) == [(r, ranks) for r in range(ranks)]:
        return True, f"{ranks} ranks"
    if ranks > 1 and hellos and all(n == 1 for _, n in hellos):
        return False, (f"{len(hellos)} singletons: each rank saw a world of 1 (the image's MPI "
                       "did not talk to the launcher)")
    if ORTE_UNDER_PRRTE.search(output):
        return False, OPEN_MPI_MISMATCH
    line = first_error(output)
    if not line and hellos:
        line = "ranks answered: " + ", ".join(f"{r} of {n}" for r, n in sorted(hellos))
    return False, line or f"job {job_state or 'failed'} without output"


@dataclass(frozen=True)
class Trial:
    """One app under one launcher."""

    module: str
    launcher: str
    works: bool
    detail: str
    job_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def mpi_apps(site: Site) -> list[App]:
    return [a for a in site.enabled() if a.mpi != "none"]


def check_mpi(site: Site, *, launchers: list[str] | None = None, ranks: int = 2,
              partition: str | None = None, timeout: float = 300,
              workdir: Path | None = None,
              progress: Callable[[str], None] | None = None) -> list[Trial]:
    """Submit one job per (MPI app, launcher), wait for all; the trials in order."""
    from hpcstack.modules.deploy import lmod_dir, read_state, tcl_modulecmd
    from hpcstack.scheduler import cancel, submit, wait

    wanted = list(launchers or site.launchers)
    if not wanted:
        raise UserError("modules check --mpi: the site file promises no launchers "
                        "(add e.g. launchers: [pmi2, pmix, mpirun])")
    apps = mpi_apps(site)
    if not apps:
        raise UserError("modules check --mpi: no app in the site file has mpi: openmpi|mpich")
    layout = Layout.of(site)
    state = read_state(layout)
    lmod = lmod_dir()
    use_lmod = lmod is not None and site.module_system in ("lmod", "both")
    lmod_init = str(lmod / "init" / "bash") if use_lmod and lmod else None
    modulepath = layout.lmod if use_lmod else layout.tcl
    modulecmd = None if use_lmod else tcl_modulecmd()
    base = workdir or Path.home() / ".cache" / "hpcstack"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mpi-check-", dir=base))
    say = progress or (lambda _msg: None)
    trials: list[Trial] = []
    jobs: list[tuple[int, App, str, Path]] = []
    try:
        for app in apps:
            deployed = state.get(app.module)
            for launcher in wanted:
                if deployed is None:
                    trials.append(Trial(app.module, launcher, False, "not deployed"))
                    continue
                hello = str(Path(layout.bin_dir(app)) / HELLO_COMMAND)
                if hello not in deployed.files:
                    trials.append(Trial(app.module, launcher, False,
                                        f"no {HELLO_COMMAND} wrapper: deploy again"))
                    continue
                slug = re.sub(r"[^A-Za-z0-9.-]", "_", f"{app.module}.{launcher}")
                output = work / f"{slug}.out"
                script = work / f"{slug}.sh"
                script.write_text(job_script(
                    module=app.module, modulepath=modulepath, launcher=launcher,
                    hello=HELLO_COMMAND, output=str(output), ranks=ranks,
                    partition=partition, timeout=timeout, lmod_init=lmod_init,
                    modulecmd=modulecmd))
                job = submit(script, cwd=work)
                say(f"submitted {app.module} with {launch_line(launcher, ranks)} as job {job}")
                jobs.append((job, app, launcher, output))
                trials.append(Trial(app.module, launcher, False, "pending", job))
        results: dict[int, Trial] = {}
        for job, app, launcher, output in jobs:
            try:
                result = wait(job, timeout=timeout)
            except UserError as exc:
                cancel(job)
                results[job] = Trial(app.module, launcher, False, str(exc), job)
                continue
            text = output.read_text(errors="replace") if output.exists() else ""
            works, detail = verdict(text, ranks, result.ok, result.state)
            results[job] = Trial(app.module, launcher, works, detail, job)
        return [results.get(t.job_id, t) if t.job_id is not None else t for t in trials]
    finally:
        shutil.rmtree(work, ignore_errors=True)
