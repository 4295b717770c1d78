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
from hpcstack.bench.job import BenchRequest
from hpcstack.errors import UserError
from hpcstack.scheduler import submit, wait


def job_script(partition: str, opts: Options, request: Path, log: Path) -> str:
    """The batch script (templates/job.sh.j2): the bench job on its typed request."""
    command = shlex.join([sys.executable, "-m", "hpcstack.bench.job", str(request)])
    return render("job.sh.j2", partition=partition, ranks=opts.ranks, log=log, command=command)


def run_partitions(opts: Options, workdir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Submit one job per partition, wait for all; partition -> JSON document."""
    base = Path(tempfile.mkdtemp(prefix="hpcstack-bench-jobs-", dir=workdir or Path.home()))
    jobs = {}
    for part in opts.partitions:
        request = base / f"{part}.request.json"
        request.write_text(BenchRequest(options=opts, output=str(base / f"{part}.json"))
                           .model_dump_json())
        script = base / f"{part}.sh"
        script.write_text(job_script(part, opts, request, base / f"{part}.log"))
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
