"""Running a Typer app the way every hpcstack command behaves.

Errors a user can cause print as ``PROG: error: …`` (one line each) with a
non-zero status; usage errors as click prints them (status 2); Ctrl-C as
``PROG: interrupted`` (status 130); never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from hpcstack.errors import UserError


def run_app(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``argv`` (default: ``sys.argv``) and return its exit status."""
    try:
        status = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except UserError as exc:
        for line in str(exc).splitlines() or ["error"]:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except NoArgsIsHelpError as exc:
        exc.show()
        return 0
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    return status if isinstance(status, int) else 0
