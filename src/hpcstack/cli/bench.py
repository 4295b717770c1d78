"""``hpcstack bench``: HPC Challenge bare, through the module wrapper and the runtime."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpcstack.errors import UserError

#: Wide enough for the table when piped (Rich would wrap it at 80 columns).
out = Console(width=None if sys.stdout.isatty() else 118)
err = Console(stderr=True)


def _write_json(doc: dict[str, Any] | list[dict[str, Any]], path: Path) -> None:
    """Atomically: a script never reads half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _local(opts: Any) -> dict[str, Any]:
    """Run here, with a progress bar over every run of every round."""
    from hpcstack.bench import bench as run_bench

    total = opts.round_count() * 3
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("hpcc", total=total)
        state = {"started": False}

        def step(mode: str, rnd: int) -> None:
            if state["started"]:
                progress.advance(task)
            state["started"] = True
            progress.update(task, description=f"round {rnd}/{opts.round_count()}: {mode}")

        doc = run_bench(opts, progress.console.print, step)
        progress.advance(task)
    return doc


def _show(doc: dict[str, Any]) -> None:
    from hpcstack.bench.report import table, verdicts

    if doc.get("partition"):
        out.print(f"[bold]partition {doc['partition']}[/] (job {doc.get('job')})")
    out.print(table(doc))
    out.print(verdicts(doc))


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="5 rounds of a problem that runs in "
                                        "seconds on 2 cores.")] = False,
    partition: Annotated[list[str] | None, typer.Option(
        "--partition", "-p", help="Run as a Slurm job on this partition; repeat for several.")
    ] = None,
    ranks: Annotated[int, typer.Option(help="MPI ranks (>1: host mpirun/srun, one container "
                                       "per rank).")] = 1,
    rounds: Annotated[int | None, typer.Option(help="Rounds (default 10; 5 with --quick).")
                      ] = None,
    size: Annotated[int | None, typer.Option(help="HPL order N (default 10000; 3000 with "
                                             "--quick).")] = None,
    runtime: Annotated[str | None, typer.Option(help="charliecloud | apptainer | "
                                                "singularity (default: detected)")] = None,
    image: Annotated[Path | None, typer.Option(help="Use this SIF instead of building one "
                                               "(it must hold the host's hpcc build).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")
                         ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a bar chart (PNG).")] = None,
) -> None:
    """Show what containers cost here: hpcc bare vs in containers, with the noise stated."""
    from hpcstack.bench import Options

    if rounds is not None and rounds < 1:
        raise UserError(f"--rounds {rounds}: at least 1")
    if image is not None and not image.exists():
        raise UserError(f"--image {image}: no such file")
    opts = Options(quick=quick, rounds=rounds, ranks=ranks, size=size, runtime=runtime,
                   image=image.resolve() if image else None, partitions=partition or [])
    if opts.partitions:
        from hpcstack.bench.slurm import run_partitions

        docs = list(run_partitions(opts).values())
    else:
        docs = [_local(opts)]
    for doc in docs:
        _show(doc)
    if json_path:
        _write_json(docs[0] if len(docs) == 1 else docs, json_path)
        err.print(f"Wrote {json_path}")
    if plot:
        from hpcstack.bench.plot import chart

        for doc in docs:
            target = plot if len(docs) == 1 else plot.with_name(
                f"{plot.stem}-{doc['partition']}{plot.suffix}")
            chart(doc, target)
            err.print(f"Wrote {target}")
