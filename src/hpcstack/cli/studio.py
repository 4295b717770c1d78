"""``hpcstack studio generate``: Open OnDemand apps from the studio file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Studio: Open OnDemand batch-connect apps that run from images.",
                  no_args_is_help=True)
err = Console(stderr=True)

DEFAULT_CONFIG = Path("/etc/hpcstack/studio.yaml")


@app.command("generate")
def generate_cmd(
    outdir: Annotated[Path, typer.Argument(help="Where the app directories go, e.g. "
                                           "/var/www/ood/apps/sys.")],
    config: Annotated[Path, typer.Option("--config", "-c", envvar="HPCSTACK_STUDIO_CONFIG",
                                         help="The studio file (YAML).")] = DEFAULT_CONFIG,
    only: Annotated[list[str] | None, typer.Option("--only", help="One app name; repeat "
                                                   "for several.")] = None,
) -> None:
    """Write one OOD batch-connect app per entry of the studio file."""
    from hpcstack.studio import generate, load_studio

    studio, site = load_studio(config)
    for path in generate(studio, site, outdir, only or None, source=str(config)):
        err.print(f"[green]generated[/] {path}", highlight=False)
