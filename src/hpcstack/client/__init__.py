"""The ``u2cb`` command: the build service's client, with the center's verbs.

:func:`main` answers a plain ``u2cb list`` into a pipe with the standard
library (:mod:`.quick`), what portals and scripts poll; every other command
line goes to the Typer app in :mod:`hpcstack.client.main`.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of ``u2cb``."""
    from hpcstack.client import quick

    status = quick.main(sys.argv[1:])
    if status is None:
        from hpcstack.client.main import app
        from hpcstack.entry import run_app

        status = run_app(app, "u2cb")
    sys.exit(status)
