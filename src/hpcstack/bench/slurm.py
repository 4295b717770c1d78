"""``hpcstack bench --partition P``: the same benchmark as a Slurm job on each partition.

Each job runs ``hpcstack bench --json`` on one exclusive node of its partition (the
image, built once on the submitting host, is found in the shared home's cache); this
side submits them all, waits, and reads their JSON back.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from hpcstack.bench import Options
from hpcstack.bench.hpcc import render
from hpcstack.errors import UserError
from hpcstack.scheduler import submit, wait


def job_argv(opts: Options, out: Path) -> list[str]:
    """The command each job runs: this very hpcstack, with this run's options."""
    argv = [sys.executable, "-m", "hpcstack", "bench", "--json", str(out),
            "--rounds", str(opts.round_count()), "--ranks", str(opts.ranks)]
    argv += ["--quick"] if opts.quick else []
    argv += ["--size", str(opts.size)] if opts.size else []
    argv += ["--runtime", opts.runtime] if opts.runtime else []
    argv += ["--image", str(opts.image)] if opts.image else []
    return argv


def job_script(partition: str, opts: Options, out: Path, log: Path) -> str:
    """The batch script (templates/job.sh.j2)."""
    command = shlex.join(job_argv(opts, out))
    return render("job.sh.j2", partition=partition, ranks=opts.ranks, log=log, command=command)


def run_partitions(opts: Options, workdir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Submit one job per partition, wait for all; partition -> JSON document."""
    base = Path(tempfile.mkdtemp(prefix="hpcstack-bench-jobs-", dir=workdir or Path.home()))
    jobs = {}
    for part in opts.partitions:
        script = base / f"{part}.sh"
        script.write_text(job_script(part, opts, base / f"{part}.json", base / f"{part}.log"))
        jobs[part] = submit(script, cwd=base)
    docs = {}
    for part, job in jobs.items():
        result = wait(job, timeout=opts.timeout * opts.round_count() * 3)
        out, log = base / f"{part}.json", base / f"{part}.log"
        if not result.ok or not out.exists():
            tail = log.read_text()[-600:] if log.exists() else "no log"
            raise UserError(f"partition {part}: job {job} {result.state}: {tail}")
        docs[part] = json.loads(out.read_text()) | {"partition": part, "job": job}
    return docs
