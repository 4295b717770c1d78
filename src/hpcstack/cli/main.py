"""The ``hpcstack`` admin and user command.

One small function per verb; the work is done by the parts (``deffile``,
``build``, ``runtime``).  Errors a user can cause print as one line and exit
non-zero; Ctrl-C exits 130 and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hpcstack import __version__
from hpcstack.cli.bench import bench
from hpcstack.cli.catalog import app as catalog_app
from hpcstack.cli.doctor import doctor
from hpcstack.cli.modules import app as modules_app
from hpcstack.cli.serve import serve
from hpcstack.cli.sign import sign, verify
from hpcstack.cli.studio import app as studio_app
from hpcstack.errors import UserError
from hpcstack.files import human_size

app = typer.Typer(help="Run an HPC center's software stack in containers.",
                  no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
def_app = typer.Typer(help="Definition files: check and show.", no_args_is_help=True)
cache_app = typer.Typer(help="The build cache.", no_args_is_help=True)
app.add_typer(def_app, name="def")
app.add_typer(cache_app, name="cache")
app.command("serve")(serve)
app.add_typer(modules_app, name="modules")
app.add_typer(catalog_app, name="catalog")
app.command("bench")(bench)
app.command("doctor")(doctor)
app.add_typer(studio_app, name="studio")
app.command("sign")(sign)
app.command("verify")(verify)

out = Console()
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print hpcstack's version."""
    print(f"hpcstack {__version__}")


# --- definition files -------------------------------------------------------------------


@def_app.command("check")
def def_check(files: Annotated[list[Path], typer.Argument(help="Definition files.")]) -> None:
    """Print every problem as FILE:LINE: message; exit 1 if there is any."""
    from hpcstack.deffile import check

    bad = False
    for path in files:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{path}:0: cannot read: {exc}")
            bad = True
            continue
        for problem in check(text, str(path)):
            print(problem)
            bad = True
    raise typer.Exit(1 if bad else 0)


@def_app.command("show")
def def_show(file: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the parsed definition (canonical text, or the model as JSON).

    Problems are warnings here (on stderr), as Apptainer builds some files that
    ``def check`` refuses; only ``check`` fails on them.
    """
    from hpcstack.deffile import render
    from hpcstack.deffile.parser import diagnose

    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read: {exc}") from None
    defn, problems = diagnose(text, str(file))
    for problem in problems:
        print(f"{problem.filename}:{problem.line}: warning: {problem.message}", file=sys.stderr)
    if as_json:
        print(json.dumps(asdict(defn), indent=2))
    else:
        try:
            sys.stdout.write(render(defn))
        except ValueError as err:  # what the text syntax cannot express: --json can
            raise UserError(f"{file}: {err}; try --json") from None


# --- build ------------------------------------------------------------------------------


@app.command()
def build(
    output: Annotated[Path, typer.Argument(help="The SIF file (or directory with --sandbox).")],
    spec: Annotated[str, typer.Argument(help="A definition file, docker://REF, or a SIF.")],
    sandbox: Annotated[bool, typer.Option("--sandbox", "-s", help="Write a writable "
                                          "directory instead of a SIF.")] = False,
    force: Annotated[bool, typer.Option("--force", "-F", help="Overwrite the output.")] = False,
    notest: Annotated[bool, typer.Option("--notest", "-T", help="Skip %test.")] = False,
    engine: Annotated[str, typer.Option(help="auto | builtin | apptainer")] = "auto",
    compression: Annotated[str, typer.Option(help="SquashFS compression: zstd | gzip | "
                                             "xz | lz4 | lzo")] = "zstd",
    docker_cert_dir: Annotated[str | None, typer.Option(
        help="Directory with the registry's CA certificate (ca.crt).")] = None,
    docker_insecure: Annotated[bool, typer.Option(
        "--docker-insecure", help="Do not verify the registry's TLS certificate.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build an image as an ordinary user (fakeroot in a user namespace)."""
    from hpcstack.build.builder import BuildOptions
    from hpcstack.build.builder import build as run_build

    if compression not in ("zstd", "gzip", "xz", "lz4", "lzo"):
        raise UserError(f"--compression {compression}: unknown (zstd, gzip, xz, lz4, lzo)")
    options = BuildOptions(sandbox=sandbox, force=force, run_test=not notest,
                           compression=compression, engine=engine,
                           docker_cert_dir=docker_cert_dir, docker_insecure=docker_insecure,
                           quiet=quiet)
    result = run_build(spec, output, options)
    err.print(f"[green]Built[/] {result.output} ({human_size(result.size)}) "
              f"in {result.seconds:.1f} s")


# --- running ----------------------------------------------------------------------------
# exec, run, shell and test parse their own command lines (hpcstack.cli.launch), the way
# Apptainer does; hpcstack.cli.main() sends them there before Typer is loaded. These
# entries only list them in `hpcstack --help` and serve callers of `app` itself.

LAUNCH_CTX = {"allow_extra_args": True, "ignore_unknown_options": True,
              "help_option_names": []}


def _launch_verb(action: str) -> None:
    from hpcstack.cli import launch

    def command(ctx: typer.Context) -> None:
        raise typer.Exit(launch.main(action, ctx.args))

    command.__doc__ = f"{launch.SUMMARY[action]} {launch.USAGE[action]}"
    app.command(action, context_settings=LAUNCH_CTX, add_help_option=False)(command)


for _action in ("exec", "run", "shell", "test"):
    _launch_verb(_action)


# --- cache ------------------------------------------------------------------------------


@cache_app.command("list")
def cache_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Bootstrap results kept for reuse, and images extracted to run them."""
    from datetime import datetime

    from hpcstack.build.cache import BuildCache
    from hpcstack.runtime.cache import cache_dir, copies

    rows = [{"kind": e.kind, "key": e.key, "source": e.source, "size": e.size,
             "created": e.created, "last_used": e.last_used} for e in BuildCache().entries()]
    rows += [{"kind": "image", "key": c.key, "source": c.image, "size": c.size,
              "last_used": c.last_used} for c in copies(cache_dir(os.environ))]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("kind", "key", "source", "size", "last used")
    for r in rows:
        used = datetime.fromtimestamp(r["last_used"]).strftime("%Y-%m-%d %H:%M")
        table.add_row(r["kind"], r["key"][:12], r["source"], human_size(r["size"]), used)
    out.print(table)


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[float | None, typer.Option(
        "--older-than", help="Only entries unused for this many days.")] = None,
) -> None:
    """Remove cached bootstrap results, extracted images no container is running, and
    the work directories of builds that were killed."""
    from hpcstack.build.builder import prune_workdirs
    from hpcstack.build.cache import BuildCache
    from hpcstack.runtime.cache import cache_dir, prune_copies

    removed = BuildCache().prune(older_than)
    freed = sum(e.size for e in removed)
    gone = prune_copies(cache_dir(os.environ), older_than)
    freed += sum(c.size for c in gone)
    err.print(f"Removed {len(removed) + len(gone)} entries ({human_size(freed)})")
    for path in prune_workdirs():
        err.print(f"Removed {path}, left by a build that was killed", soft_wrap=True)

