"""WebSockets: a live build log, and interactive fakeroot sessions in a sandbox.

``connect`` protocol: binary frames carry terminal bytes both ways; text frames
carry JSON control messages — from the client ``{"resize": [rows, cols]}``,
from the service a last ``{"exit": STATUS}`` before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import termios
from typing import TYPE_CHECKING

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from hpcstack.build import session
from hpcstack.errors import UserError
from hpcstack.files import tree_size
from hpcstack.service.models import ACTIVE, Kind, State

if TYPE_CHECKING:
    from hpcstack.service.app import Service

API = "/api/v1"
POLICY_VIOLATION = 1008


def set_winsize(fd: int, rows: int, cols: int) -> None:
    rows, cols = max(1, min(rows, 1000)), max(1, min(cols, 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def refuse(ws: WebSocket, status: int, detail: str) -> None:
    """Tell the client why (as the REST API would), then close."""
    await ws.accept()
    await ws.send_text(json.dumps({"error": detail, "status": status}))
    await ws.close(code=POLICY_VIOLATION)


async def authorised_row(svc: Service, ws: WebSocket, name: str, owner: str | None):
    from hpcstack.service.app import ServiceError, lookup, owner_uid, who

    try:
        me = await asyncio.to_thread(who, svc, ws.headers)
        return await asyncio.to_thread(lookup, svc, owner_uid(me, owner), name)
    except ServiceError as err:
        await refuse(ws, err.status, err.detail)
        return None


def add_websockets(app: FastAPI, svc: Service) -> None:
    @app.websocket(f"{API}/containers/{{name}}/log/ws")
    async def follow_log(ws: WebSocket, name: str, owner: str | None = None) -> None:
        """The build log as it grows; closes when the build has ended."""
        row = await authorised_row(svc, ws, name, owner)
        if row is None:
            return
        await ws.accept()
        from hpcstack.service.app import read_log

        offset = 0
        try:
            while True:
                chunk = await asyncio.to_thread(read_log, svc, row, offset)
                if chunk.text:
                    await ws.send_text(chunk.text)
                offset = chunk.next_offset
                if chunk.done:
                    break
                await asyncio.sleep(0.3)
            await ws.close()
        except WebSocketDisconnect:
            return

    @app.websocket(f"{API}/containers/{{name}}/connect")
    async def connect(ws: WebSocket, name: str, owner: str | None = None, rows: int = 24,
                      cols: int = 80, term: str = "xterm") -> None:
        """A root shell (fakeroot) in the sandbox; extra ``cmd`` query items run instead."""
        row = await authorised_row(svc, ws, name, owner)
        if row is None:
            return
        if row.kind != Kind.IMG.value:
            await refuse(ws, 409, f"{name}: an image built from a definition; connect works "
                         f"on sandboxes (u2cb create -n NEW -b {name})")
            return
        if State(row.state) in ACTIVE or row.state != State.READY.value:
            await refuse(ws, 409, f"{name}: not ready (the build is {row.state})")
            return
        busy = await asyncio.to_thread(running_builds, svc, row.uid)
        busy += svc.open_sessions[row.uid]  # no await between this check and the count
        if busy >= svc.settings.max_builds_per_user:
            await refuse(ws, 429, f"{name}: {busy} builds and sessions of yours are running, "
                         f"{svc.settings.max_builds_per_user} at once allowed; end one first")
            return
        svc.open_sessions[row.uid] += 1
        try:
            await ws.accept()
            status = await run_session(svc, ws, row, ws.query_params.getlist("cmd"), rows,
                                       cols, term)
        finally:
            svc.open_sessions[row.uid] -= 1
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"exit": status}))
            await ws.close()


async def run_session(svc: Service, ws: WebSocket, row, command: list[str], rows: int,
                      cols: int, term: str) -> int:
    """Run the session on a PTY, pumping bytes until the shell ends; its exit status."""
    paths = svc.paths(row.id)
    master, slave = pty.openpty()
    set_winsize(master, rows, cols)
    term = term if term.replace("-", "").isalnum() and len(term) < 64 else "xterm"
    try:
        proc = await asyncio.to_thread(session.start, str(paths.sandbox), command,
                                       network=svc.settings.build_network, term=term,
                                       tty=slave,
                                       loopback_ports=svc.settings.build_loopback_ports)
    except UserError as err:
        os.close(slave)
        os.close(master)
        await ws.send_bytes(f"u2cb: {err}\r\n".encode())
        return 1
    os.close(slave)
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        output.put_nowait(data)
        if not data:
            loop.remove_reader(master)

    loop.add_reader(master, readable)

    async def pump_out() -> None:
        while data := await output.get():
            await ws.send_bytes(data)

    last_input = loop.time()

    async def pump_in() -> None:
        nonlocal last_input
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            last_input = loop.time()
            if msg.get("bytes"):
                os.write(master, msg["bytes"])
            elif msg.get("text"):
                control(master, msg["text"])

    async def limits() -> None:
        """The site's limits on a session: idle time (no input) and total time."""
        idle, total = svc.settings.session_idle_limit, svc.settings.session_time_limit
        started = loop.time()
        while True:
            now = loop.time()
            if now - last_input > idle or now - started > total:
                why = (f"no input for {idle:g} s" if now - last_input > idle
                       else f"the time limit of {total:g} s")
                with contextlib.suppress(Exception):
                    await ws.send_bytes(f"\r\nu2cb: session ended: {why}\r\n".encode())
                return
            await asyncio.sleep(min(1.0, idle, total))

    out_task = asyncio.create_task(pump_out())
    in_task = asyncio.create_task(pump_in())
    limit_task = asyncio.create_task(limits())
    try:
        await asyncio.wait({out_task, in_task, limit_task},
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not out_task.done():  # the client went away, or a limit: end the session
            await asyncio.to_thread(hang_up, proc)
        in_task.cancel()
        limit_task.cancel()
        status = await asyncio.to_thread(proc.wait)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(out_task, 2)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(master)
        os.close(master)
        (paths.dir / "sandbox.changed").touch()
        await asyncio.to_thread(update_usage, svc, row.id)
    return status if status >= 0 else 128 - status


def hang_up(proc: subprocess.Popen) -> None:
    """As a terminal hang-up would (``unshare`` ignores SIGTERM); SIGKILL after 5 s.

    Killing ``unshare`` kills its namespace's init (``--kill-child``) and so
    every process of the session.
    """
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGHUP)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def control(master: int, text: str) -> None:
    try:
        msg = json.loads(text)
    except ValueError:
        return
    if isinstance(msg, dict) and isinstance(msg.get("resize"), list) and len(msg["resize"]) == 2:
        with contextlib.suppress(TypeError, ValueError, OSError):
            set_winsize(master, int(msg["resize"][0]), int(msg["resize"][1]))


def running_builds(svc: Service, uid: int) -> int:
    """A user's running builds: with open sessions they count against ``--per-user``."""
    from hpcstack.service import db

    with svc.db.session() as s:
        return db.running_count(s, uid)


def update_usage(svc: Service, key: int) -> None:
    from hpcstack.service import db

    with svc.db.session() as s:
        r = s.get(db.ContainerRow, key)
        if r is not None:
            r.usage = tree_size(svc.paths(key).dir)
