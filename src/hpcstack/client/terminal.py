"""``u2cb connect``: the local terminal joined to a shell in the sandbox over WebSocket.

Raw mode when stdin is a terminal (so Ctrl-C travels as a byte and the remote
shell's foreground job gets SIGINT), window size on connect and on SIGWINCH,
and the remote exit status as ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from hpcstack.client.api import Client
from hpcstack.errors import UserError


def connect(client: Client, name: str, command: list[str]) -> int:
    size = shutil.get_terminal_size((80, 24))
    params = [("rows", size.lines), ("cols", size.columns),
              ("term", os.environ.get("TERM", "xterm"))] + [("cmd", c) for c in command]
    url = client.ws_url(f"/containers/{name}/connect") + "?" + urlencode(params)
    try:
        ws = ws_connect(url, additional_headers=client.auth_headers(), max_size=None,
                        open_timeout=30)
    except InvalidStatus as err:
        raise UserError(f"{name}: the build service refused the session "
                        f"({err.response.status_code})") from None
    except OSError as err:
        raise UserError(f"cannot reach the build service at {client.config.server}: "
                        f"{err}") from None
    with ws, raw_terminal() as interactive:
        if interactive:
            def resize(*_):
                s = shutil.get_terminal_size((80, 24))
                with contextlib.suppress(Exception):
                    ws.send(json.dumps({"resize": [s.lines, s.columns]}))
            signal.signal(signal.SIGWINCH, resize)
        threading.Thread(target=pump_stdin, args=(ws,), daemon=True).start()
        return pump_output(ws)


@contextlib.contextmanager
def raw_terminal():
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def pump_stdin(ws) -> None:
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:  # input ended (a pipe): an EOF for the remote shell, as a tty would
            with contextlib.suppress(ConnectionClosed):
                ws.send(b"\x04")
            return
        try:
            ws.send(data)
        except ConnectionClosed:
            return


def pump_output(ws) -> int:
    out = sys.stdout.buffer
    status = 255
    try:
        for msg in ws:
            if isinstance(msg, bytes):
                out.write(msg)
                out.flush()
                continue
            ctl = json.loads(msg)
            if "error" in ctl:
                raise UserError(ctl["error"])
            if "exit" in ctl:
                status = int(ctl["exit"])
    except ConnectionClosed:
        pass
    return status
