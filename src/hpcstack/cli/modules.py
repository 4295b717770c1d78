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
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every modulefile loads, every image is present and matches its checksum."""
    from hpcstack.modules import check

    problems = check(_site(site), load=not no_load)
    if as_json:
        print(json.dumps([{"module": p.module, "problem": p.message} for p in problems],
                         indent=2))
    else:
        for p in problems:
            print(f"{p.module}: {p.message}")
        if not problems:
            err.print("[green]all deployed modules are fine[/]")
    if problems:
        raise typer.Exit(1)


__all__ = ["UserError", "app"]
