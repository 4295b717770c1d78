"""``u2cb``: build container images on the cluster without root, through the U2CB service.

The center's verbs (create, defcreate, list, connect, download, delete, shell)
plus status, logs, cancel.  Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hpcstack.client import quick
from hpcstack.client.api import Client
from hpcstack.client.config import load_config
from hpcstack.entry import run_app
from hpcstack.errors import UserError
from hpcstack.service.models import name_problem

app = typer.Typer(help="U2CB: build container images on the cluster without root.",
                  no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
token_app = typer.Typer(help="API tokens for web portals (admins only).",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
out = Console()
err = Console(stderr=True)
STATE: dict[str, str | None] = {"server": None}
DONE_STATES = ("ready", "failed", "cancelled")

NameOpt = Annotated[str, typer.Option("--name", "-n", help="The container's name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DetachOpt = Annotated[bool, typer.Option("--detach", help="Return once queued; "
                                         "follow with u2cb status / logs.")]


@app.callback()
def root(server: Annotated[str | None, typer.Option(
        "--server", "-s", help="Service URL (else $U2CB_SERVER, then the config file).")]
         = None) -> None:
    STATE["server"] = server


def client() -> Client:
    return Client(load_config(STATE["server"]))


def valid(name: str) -> str:
    if problem := name_problem(name):
        raise UserError(problem)
    return name


# --- building --------------------------------------------------------------------------


def wait_for(c: Client, name: str, verbose: bool) -> dict:
    """Follow a build to its end (log lines with --verbose); fail with its reason."""
    offset, info = 0, c.status(name)
    with err.status(f"building {name} …", spinner="dots") if err.is_terminal and not verbose \
            else _nothing():
        while True:
            if verbose:
                chunk = c.log(name, offset)
                sys.stderr.write(chunk["text"])
                offset = chunk["next_offset"]
            info = c.status(name)
            if info["state"] in DONE_STATES:
                break
            time.sleep(0.5)
    if verbose:
        sys.stderr.write(c.log(name, offset)["text"])
    if info["state"] != "ready":
        raise UserError(f"{name}: build {info['state']}: {info.get('reason') or 'no reason'}")
    return info


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@app.command()
def create(name: NameOpt, base: Annotated[str, typer.Option(
        "--base", "-b", help="docker://REF, debootstrap://SUITE or one of your containers.")],
           detach: DetachOpt = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """A writable sandbox from a base image (connect to it, then download it)."""
    c = client()
    c.create(valid(name), base)
    if not detach:
        wait_for(c, name, verbose)
    err.print(f"{name}: {'queued' if detach else 'ready'}")
    if not detach:
        refresh_module(c, name)


def read_definition(deffile: Path) -> str:
    """The definition's text; one-line UserError when it is missing, a directory, unreadable
    or not UTF-8."""
    try:
        return deffile.read_bytes().decode()
    except FileNotFoundError:
        raise UserError(f"{deffile}: no such definition file") from None
    except IsADirectoryError:
        raise UserError(f"{deffile}: is a directory, not a definition file") from None
    except OSError as exc:
        raise UserError(f"{deffile}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{deffile}: not UTF-8 text") from None


def uploads_for(deffile: Path) -> list[tuple[str, Path]]:
    """The files ``%files`` names, relative to the definition file's directory.

    A source that matches nothing, cannot be read, or is neither a file nor a directory is
    a one-line ``FILE:LINE: …`` UserError: nothing is sent.
    """
    from hpcstack.deffile import parse

    text = read_definition(deffile)
    try:
        defn = parse(text, deffile.name)
    except UserError:
        return []  # the service says what is wrong, with FILE:LINE
    base = deffile.resolve().parent
    found: dict[str, Path] = {}
    for stage in defn.stages:
        for section in stage.files:
            if section.stage is not None:
                continue
            for t in section.transfers:
                if t.src.startswith(("/", "~")) or ".." in t.src.split("/"):
                    continue  # refused by the service with the line number
                where = f"{deffile}:{t.line}: %files: {t.src}"
                matches = sorted(glob.glob(str(base / t.src)))
                if not matches:
                    raise UserError(f"{where}: no such file or directory "
                                    "(relative to the definition file)")
                for match in matches:
                    add_upload(found, base, Path(match), where)
    return sorted(found.items())


def add_upload(found: dict[str, Path], base: Path, path: Path, where: str) -> None:
    """``path`` (a file, or a directory's files), each checked readable; UserError naming
    ``where`` (FILE:LINE: %files: SRC) and the path otherwise."""

    def refuse(exc: OSError) -> None:
        bad = os.path.relpath(exc.filename, base) if exc.filename else path
        raise UserError(f"{where}: cannot read {bad}: {exc.strerror or exc}")

    if path.is_dir():
        for top, dirs, files in os.walk(path, onerror=refuse):
            dirs.sort()
            for name in sorted(files):
                add_file(found, base, Path(top) / name, where)
    else:
        add_file(found, base, path, where)


def add_file(found: dict[str, Path], base: Path, path: Path, where: str) -> None:
    rel = os.path.relpath(path, base)
    if not path.is_file():
        raise UserError(f"{where}: {rel}: not a regular file or directory")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UserError(f"{where}: cannot read {rel}: {exc.strerror or exc}") from None
    found[rel] = path


@app.command()
def defcreate(name: NameOpt, deffile: Annotated[Path, typer.Option(
        "--def", "-d", readable=False,  # we say why in one line
        help="The definition file.")], detach: DetachOpt = False,
              verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """An image from a definition file (files named by %files are uploaded with it)."""
    text = read_definition(deffile)
    uploads = uploads_for(deffile)
    c = client()
    c.defcreate(valid(name), deffile.name, text.encode(), uploads)
    if not detach:
        wait_for(c, name, verbose)
    err.print(f"{name}: {'queued' if detach else 'ready'}")
    if not detach:
        refresh_module(c, name)


# --- looking ---------------------------------------------------------------------------


@app.command("list")
def list_(what: Annotated[str | None, typer.Argument(help="def | img")] = None,
          as_json: JsonOpt = False,
          all_users: Annotated[bool, typer.Option("--all", help="Everyone's (admins).")]
          = False) -> None:
    """Your containers: `list def` (from definition files), `list img` (sandboxes)."""
    if what not in (None, "def", "img"):
        raise UserError(f"list {what}: use `list`, `list def` or `list img`")
    rows = client().list(what, all_users)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    header = quick.COLUMNS + (("owner",) if all_users else ())
    cells = quick.table_rows(rows, all_users)
    if not out.is_terminal:
        sys.stdout.write(quick.plain_table(header, cells))
        return
    table = Table(*header)
    for row in cells:
        table.add_row(*row)
    out.print(table)


@app.command()
def status(name: NameOpt, as_json: JsonOpt = False) -> None:
    """A container's state (and why a build failed)."""
    info = client().status(valid(name))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    line = f"{info['name']}: {info['state']}"
    if info.get("reason"):
        line += f" ({info['reason']})"
    print(line)
    if info.get("sha256"):
        print(f"sha256: {info['sha256']}")


@app.command()
def logs(name: NameOpt, follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing until the build ends.")] = False) -> None:
    """The build log."""
    c = client()
    valid(name)
    if follow:
        follow_ws(c, name)
        return
    sys.stdout.write(c.log(name)["text"])


def follow_ws(c: Client, name: str) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    try:
        with ws_connect(c.ws_url(f"/containers/{name}/log/ws"),
                        additional_headers=c.auth_headers(), max_size=None) as ws:
            for msg in ws:
                if isinstance(msg, str) and msg.startswith('{"error"'):
                    raise UserError(json.loads(msg)["error"])
                sys.stdout.write(msg if isinstance(msg, str) else msg.decode())
                sys.stdout.flush()
    except ConnectionClosed:
        pass
    except OSError as exc:
        raise UserError(f"cannot reach the build service: {exc}") from None


@app.command()
def cancel(name: NameOpt) -> None:
    """Stop a queued or running build (its whole process tree)."""
    info = client().cancel(valid(name))
    if info["state"] == "running":  # another service instance runs it; it stops it soon
        err.print(f"{name}: {info.get('reason') or 'running'}")
    else:
        err.print(f"{name}: {info['state']}")


@app.command()
def delete(name: NameOpt) -> None:
    """Remove a container and its files."""
    client().delete(valid(name))
    err.print(f"{name}: deleted")


# --- using -----------------------------------------------------------------------------


@app.command()
def download(name: NameOpt, output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to save it (default ./NAME.sif).")] = None,
             quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Pack the container into a SIF and download it (resumable, sha256-checked)."""
    from hpcstack.client.transfer import download as fetch

    art = fetch(client(), valid(name), output or Path(f"{name}.sif"), quiet)
    err.print(f"{name}: saved {art['path']} ({quick.human(art['size'])}, "
              f"sha256 {art['sha256'][:12]}…)")


# --- your images as modules -------------------------------------------------------------

CenterSiteOpt = Annotated[Path, typer.Option(
    "--site", envvar="HPCSTACK_MODULES_SITE",
    help="The center's modules site file: your modules run with its runtime settings.")]
CENTER_SITE = Path("/etc/hpcstack/modules.yaml")


def my_modules(site: Path | None = None):  # type: ignore[no-untyped-def]
    from hpcstack.modules import load_site
    from hpcstack.modules.personal import user_site

    site = site or Path(os.environ.get("HPCSTACK_MODULES_SITE") or CENTER_SITE)
    return user_site(load_site(site) if site.is_file() else None)


def deploy_module(c: Client, name: str, commands: list[str] | None, site_file: Path | None,
                  quiet: bool = False):  # type: ignore[no-untyped-def]
    """Download NAME (checksum-checked) and deploy it as the module NAME/latest: the
    deploy report and the user's module site (the portal's button does the same)."""
    from hpcstack.client.transfer import download as fetch
    from hpcstack.modules import personal

    info = c.status(name)
    if info["state"] != "ready":
        raise UserError(f"{name}: {info['state']}; a module is made from a ready container")
    mine = my_modules(site_file)
    target = personal.source_of(mine, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fetch(c, name, target, quiet)
    return personal.add(mine, name, target, commands), mine


def make_module(c: Client, name: str, commands: list[str] | None, site_file: Path | None,
                quiet: bool = False) -> None:
    """Download NAME (checksum-checked) and deploy it as the module NAME/latest."""
    report, mine = deploy_module(c, name, commands, site_file, quiet)
    for warning in report.warnings:
        err.print(f"warning: {warning}", soft_wrap=True)
    [done] = report.deployed
    modulepath = mine.modulepath
    err.print(f"{name}: module {done.module} with {', '.join(done.commands)}", soft_wrap=True)
    err.print(f"  use it: module use {modulepath}; module load {name}", soft_wrap=True)


def refresh_module(c: Client, name: str) -> None:
    """A rebuilt image refreshes the module made from it."""
    from hpcstack.modules.personal import has_module

    mine = my_modules()
    if has_module(mine, name):
        app = next(a for a in mine.apps if a.name == name)
        commands = None if app.commands == "discover" else list(app.commands)
        make_module(c, name, commands, None, quiet=True)


@app.command()
def module(name: NameOpt,
           commands: Annotated[str | None, typer.Option(
               "--commands", help="cmd1,cmd2 (default: the image's hpcstack.commands label, "
               "else what is in /usr/local/bin and /opt/*/bin)")] = None,
           remove: Annotated[bool, typer.Option(
               "--remove", help="Remove the module (the container stays).")] = False,
           site: CenterSiteOpt = CENTER_SITE) -> None:
    """Your container as a module: module use ~/.local/share/hpcstack/modules; module load NAME."""
    from hpcstack.modules.personal import remove as remove_module

    valid(name)
    if remove:
        remove_module(my_modules(site), name)
        err.print(f"{name}: module removed")
        return
    wanted = [c.strip() for c in commands.split(",") if c.strip()] if commands else None
    make_module(client(), name, wanted, site)


# --- admin: API tokens ----------------------------------------------------------------


@token_app.command("issue")
def token_issue(user: Annotated[str, typer.Argument(help="The user the token acts as.")],
                admin: Annotated[bool, typer.Option("--admin", help="The token may act "
                                                    "for every user.")] = False) -> None:
    """Issue a token; its secret is printed once, on stdout."""
    info = client().issue_token(user, admin)
    print(info["token"])
    err.print(f"token {info['id']} for {info['user']}" + (" (admin)" if info["admin"] else ""))


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Issued tokens: id, user, admin, created (never the secrets)."""
    tokens = client().tokens()
    if as_json:
        print(json.dumps(tokens, indent=2))
        return
    table = Table("id", "user", "admin", "created")
    for t in tokens:
        table.add_row(t["id"], t["user"], "yes" if t["admin"] else "", t["created"][:19])
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(metavar="ID",
                                                         help="As `token list` shows it.")]
                 ) -> None:
    """Revoke a token: its next request is refused."""
    client().revoke_token(token_id)
    err.print(f"token {token_id}: revoked")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def connect(ctx: typer.Context, name: NameOpt) -> None:
    """A root shell inside the sandbox (fakeroot); `-- CMD…` runs a command instead."""
    from hpcstack.client.terminal import connect as join

    raise typer.Exit(join(client(), valid(name), list(ctx.args)))


@app.command()
def shell() -> None:
    """The interactive prompt `(U2CB Server) > `."""
    from hpcstack.client.prompt import Prompt

    Prompt(run_verb).cmdloop()


def run_verb(argv: list[str]) -> int:
    """Run one u2cb command line in this process; its exit status (for the prompt)."""
    return run_app(app, "u2cb", argv)

