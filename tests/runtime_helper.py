"""Run one ``hpcstack.runtime`` launch the way the CLI will, for tests run as another user.

    python runtime_helper.py RUNTIME '{"action": "exec", "image": "x.sif", "args": ["id"]}'
    python runtime_helper.py RUNTIME SPEC --execute   # os.execvpe instead of a child

Errors a user can cause print as one line and exit 1, without a traceback.
"""

from __future__ import annotations

import json
import os
import sys

from hpcstack.errors import UserError
from hpcstack.runtime import Launch, execute, run, select


def main(argv: list[str]) -> int:
    runtime, spec = argv[1], json.loads(argv[2])
    try:
        launch = Launch(**spec)
        adapter = select(runtime)
        if "--execute" in argv:
            print(f"helper-pid={os.getpid()}", file=sys.stderr, flush=True)
            execute(launch, adapter)
        return run(launch, adapter)
    except UserError as err:
        print(f"hpcstack: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
