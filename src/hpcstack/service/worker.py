"""The process a build runs in: ``hpcstack build`` that also cleans up on SIGTERM.

SIGTERM (cancel, time limit, service shutdown) becomes KeyboardInterrupt so the
builder kills its namespace and removes its work directory; the process also
asks for SIGTERM when the service that started it dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import signal
import sys

from hpcstack.lifetime import die_with_parent


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    if "--die-with-parent" in sys.argv:
        sys.argv.remove("--die-with-parent")
        die_with_parent()
    from hpcstack.cli.main import main as hpcstack_main

    sys.argv[0] = "hpcstack"
    hpcstack_main()


if __name__ == "__main__":
    main()
