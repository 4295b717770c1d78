"""``hpcstack doctor``: check this node for everything hpcstack needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_SITE = Path("/etc/hpcstack/modules.yaml")


def doctor(
    user: Annotated[str | None, typer.Option(
        "--user", "-u", help="Check for this user (subordinate IDs); default: you.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Findings as JSON.")] = False,
    site: Annotated[Path | None, typer.Option(
        "--site", "-c", envvar="HPCSTACK_MODULES_SITE",
        help="The site modules file: the MPI launchers it promises are checked "
        "(default /etc/hpcstack/modules.yaml when present).")] = None,
    munge_socket: Annotated[str | None, typer.Option(help="munged's socket.")] = None,
    min_free_gib: Annotated[float, typer.Option(
        help="Free space needed in the build directory and the cache, GiB.")] = 2.0,
) -> None:
    """One line per check, the exact fix with each problem; exit 1 if any failed.

    Warnings (a build directory on a network file system) print but do not fail.
    """
    from hpcstack.doctor import Inputs, Status, run_checks

    inputs = Inputs(min_free=int(min_free_gib * 2**30), munge_socket=munge_socket,
                    launchers=site_launchers(site))
    if user:
        inputs.user = user
        inputs.cache_dir = user_cache_dir(user, inputs.cache_dir)
    findings = run_checks(inputs)
    if as_json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding.line())
    raise typer.Exit(1 if any(f.status is Status.FAIL for f in findings) else 0)


def user_cache_dir(user: str, mine: Path) -> Path:
    """The build cache of ``user`` as its builds find it by default (``~/.cache/hpcstack``);
    the caller's own (``mine``, which honours the caller's variables) for the caller."""
    import os
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return mine  # the subordinate-ID checks report the unknown user
    if entry.pw_uid == os.getuid():
        return mine
    return Path(entry.pw_dir) / ".cache" / "hpcstack"


def site_launchers(site: Path | None) -> list[str]:
    """The launchers the site file promises (none without a site file)."""
    from hpcstack.modules import load_site

    if site is None:
        if not DEFAULT_SITE.is_file():
            return []
        site = DEFAULT_SITE
    return list(load_site(site).launchers)


__all__ = ["doctor"]
