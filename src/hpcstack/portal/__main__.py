"""``python -m hpcstack.portal``: serve the page (app.js starts it; so can a developer).

    python -m hpcstack.portal --uds /run/user/1000/u2cb/portal.sock --base-uri /pun/sys/u2cb
    python -m hpcstack.portal --port 8080            (loopback only: for development)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hpcstack.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcstack.portal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--uds", help="listen on this Unix socket (made 0600)")
    where.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--base-uri", default=os.environ.get("PASSENGER_BASE_URI", "/"))
    parser.add_argument("--config", type=Path, help="portal.yaml (from studio generate)")
    args = parser.parse_args(argv)

    import uvicorn

    from hpcstack.portal.app import create_app
    from hpcstack.portal.config import load_config

    try:
        app = create_app(load_config(args.config), args.base_uri)
    except UserError as err:
        print(f"u2cb portal: error: {err}", file=sys.stderr)
        return 1
    os.umask(0o077)  # the socket: the user's own, like their credential
    if args.uds:
        uvicorn.run(app, uds=args.uds, log_level="warning", ws_max_size=1 << 24)
    else:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
