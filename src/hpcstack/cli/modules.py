"""``hpcstack modules deploy|list|remove|check``: the site's container modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hpcstack.errors import UserError

app = typer.Typer(help="Container modules: modulefiles and wrappers for deployed images.",
                  no_args_is_help=True)
out = Console()
err = Console(stderr=True)

SiteOpt = Annotated[Path, typer.Option("--site", "-c", envvar="HPCSTACK_MODULES_SITE",
                                       help="The site modules file (YAML).")]
DEFAULT_SITE = Path("/etc/hpcstack/modules.yaml")


def _site(path: Path):  # type: ignore[no-untyped-def]
    from hpcstack.modules import load_site

    return load_site(path)


@app.command("deploy")
def deploy_cmd(
    site: SiteOpt = DEFAULT_SITE,
    only: Annotated[list[str] | None, typer.Option("--only", help="NAME or NAME/VERSION; "
                                                   "repeat for several.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write modulefiles, wrappers and images for every enabled app of the site file."""
    from hpcstack.modules import deploy

    report = deploy(_site(site), only or None,
                    warn=lambda msg: err.print(f"[yellow]warning:[/] {msg}", highlight=False))
    if as_json:
        print(json.dumps({"deployed": [d.module for d in report.deployed],
                          "removed": report.removed, "warnings": report.warnings,
                          "seconds": round(report.seconds, 3)}, indent=2))
        return
    for d in report.deployed:
        err.print(f"[green]deployed[/] {d.module}: {' '.join(d.commands)}", highlight=False)
    for name in report.removed:
        err.print(f"[red]removed[/] {name}", highlight=False)
    err.print(f"{len(report.deployed)} modules in {report.seconds:.2f} s", highlight=False)


@app.command("usage")
def usage_cmd(
    site: SiteOpt = DEFAULT_SITE,
    since: Annotated[str | None, typer.Option(help="Only the last 30d, 12h, 2w …")] = None,
    by: Annotated[str, typer.Option(help="module | user")] = "module",
    log: Annotated[Path | None, typer.Option(help="The usage log (default: the site "
                                             "file's usage_log).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Runs of each container app (or by each user), from the wrappers' usage records."""
    import time

    from hpcstack.modules import usage

    if by not in ("module", "user"):
        raise UserError(f"--by {by}: use module or user")
    if log is None:
        configured = _site(site).usage_log
        if configured is None:
            raise UserError(f"{site}: usage_log is not set, so wrappers keep no usage records")
        log = Path(configured)
    now = int(time.time())
    start = usage.parse_since(since, now) if since else None
    skipped: list[int] = []
    records = usage.read_records(log, skipped)
    rows = usage.summarise(records, by, start)  # type: ignore[arg-type]
    earliest = start if start is not None else min((r.first for r in rows), default=now)
    window = now - earliest
    if as_json:
        print(json.dumps({"by": by, "since": start, "days": usage.days(window),
                          "skipped_lines": skipped[0] if skipped else 0,
                          "rows": [r.as_dict() for r in rows]}, indent=2))
        return
    for row in rows:
        print(usage.sentence(row, by, window))  # type: ignore[arg-type]
    if not rows:
        err.print(f"no runs recorded in {log}" + (f" since {since}" if since else ""))
    if skipped and skipped[0]:
        err.print(f"[yellow]warning:[/] {skipped[0]} lines of {log} are not records; skipped",
                  highlight=False)


@app.command("list")
def list_cmd(site: SiteOpt = DEFAULT_SITE,
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The apps of the site file and what is deployed."""
    from hpcstack.modules import listing

    rows = listing(_site(site))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("module", "state", "deployed", "commands", "image")
    for r in rows:
        state = r["state"]
        if r["default"] and state != "default":
            state = f"{state} (default)"
        table.add_row(str(r["module"]), str(state), "yes" if r["deployed"] else "no",
                      " ".join(r["commands"]), str(r["image"]))  # type: ignore[arg-type]
    out.print(table)


@app.command("remove")
def remove_cmd(names: Annotated[list[str], typer.Argument(help="NAME or NAME/VERSION.")],
               site: SiteOpt = DEFAULT_SITE) -> None:
    """Remove deployed modules (set state: disabled in the site file to keep them off)."""
    from hpcstack.modules import remove

    for name in remove(_site(site), names):
        err.print(f"[red]removed[/] {name}", highlight=False)


@app.command("check")
def check_cmd(site: SiteOpt = DEFAULT_SITE,
              no_load: Annotated[bool, typer.Option("--no-load", help="Skip loading each "
                                                    "modulefile.")] = False,
              mpi: Annotated[bool, typer.Option("--mpi", help="Also run each MPI app's "
                                                "2-rank hello under Slurm with every launcher "
                                                "the site file promises.")] = False,
              launcher: Annotated[list[str] | None, typer.Option(
                  "--launcher", help="With --mpi: try this launcher (pmi2, pmix, mpirun) "
                  "instead of the site file's; repeat for several.")] = None,
              partition: Annotated[str | None, typer.Option(
                  "--partition", "-p", help="With --mpi: the Slurm partition.")] = None,
              timeout: Annotated[float, typer.Option(
                  "--timeout", help="With --mpi: seconds each job may take.")] = 300,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every modulefile loads, every image is present and matches its checksum (and, with
    require_signature, is signed by a key in today's trusted_keys); with --mpi, every
    promised MPI launcher starts every MPI app."""
    from hpcstack.modules import check

    config = _site(site)
    if launcher and not mpi:
        raise UserError("--launcher: only with --mpi")
    launchers = _launchers(launcher) if launcher else None
    problems = check(config, load=not no_load)
    trials = _check_mpi(config, launchers, partition, timeout, as_json) if mpi else []
    if as_json:
        found = [{"module": p.module, "problem": p.message} for p in problems]
        if mpi:
            print(json.dumps({"problems": found, "mpi": [t.as_dict() for t in trials]},
                             indent=2))
        else:
            print(json.dumps(found, indent=2))
    else:
        for p in problems:
            print(f"{p.module}: {p.message}")
        if trials:
            _print_trials(trials)
        if not problems and not [t for t in trials if not t.works]:
            err.print("[green]all deployed modules are fine[/]")
    if problems or [t for t in trials if not t.works]:
        raise typer.Exit(1)


def _launchers(names: list[str]) -> list[str]:
    from typing import get_args

    from hpcstack.modules.config import Launcher

    known = get_args(Launcher)
    for name in names:
        if name not in known:
            raise UserError(f"--launcher {name}: expected one of {', '.join(known)}")
    return names


def _check_mpi(config, launchers, partition, timeout, quiet):  # type: ignore[no-untyped-def]
    from hpcstack.modules import check_mpi

    def progress(msg: str) -> None:
        if not quiet:
            err.print(msg, highlight=False)

    return check_mpi(config, launchers=launchers, partition=partition, timeout=timeout,
                     progress=progress)


def _print_trials(trials) -> None:  # type: ignore[no-untyped-def]
    """App x launcher: a Rich table on a terminal, plain lines otherwise."""
    launchers = list(dict.fromkeys(t.launcher for t in trials))
    modules = list(dict.fromkeys(t.module for t in trials))
    cell = {(t.module, t.launcher): t for t in trials}
    if out.is_terminal:
        table = Table("module", *launchers, title="MPI launchers")
        for module in modules:
            row = []
            for name in launchers:
                t = cell[(module, name)]
                row.append(f"[green]works[/] ({t.detail})" if t.works
                           else f"[red]fails[/]: {t.detail}")
            table.add_row(module, *row)
        out.print(table)
        return
    width = max(len("module"), *(len(m) for m in modules))
    cols = [max(len(n), len("works")) for n in launchers]

    def line(first: str, cells: list[str]) -> str:
        padded = (f"{c:<{w}}" for c, w in zip(cells, cols, strict=True))
        return "  ".join([f"{first:<{width}}", *padded]).rstrip()

    print(line("module", launchers))
    for module in modules:
        print(line(module, ["works" if cell[(module, n)].works else "fails"
                            for n in launchers]))
    for t in trials:
        if not t.works:
            print(f"{t.module} {t.launcher}: {t.detail}")


__all__ = ["UserError", "app"]
