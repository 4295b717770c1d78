"""The ``hpcstack`` command.

:func:`main` answers the hot paths (``exec``, ``run``, ``shell``, ``version``)
without loading Typer and Rich, which cost more than the rest of a container
launch; every other verb goes to the Typer app in :mod:`hpcstack.cli.main`.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of ``hpcstack``."""
    argv = sys.argv[1:]
    if argv == ["version"]:
        from hpcstack import __version__

        print(f"hpcstack {__version__}")
        sys.exit(0)
    from hpcstack.cli import launch

    if argv and argv[0] in launch.VERBS:
        sys.exit(launch.main(argv[0], argv[1:]))
    from hpcstack.cli.main import app
    from hpcstack.entry import run_app

    sys.exit(run_app(app, "hpcstack"))
