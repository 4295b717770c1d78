"""The U2CB page: a thin web front on :class:`hpcstack.client.api.Client`.

It runs as the user (Open OnDemand's per-user server starts it), so every call to
the build service carries that user's own MUNGE credential, exactly as ``u2cb``
does.  Definitions are checked with :func:`hpcstack.deffile.check`; the build log
and the terminal are the service's own WebSockets, relayed.  Every route lives
under the base URI Passenger gives the app (``/pun/sys/u2cb``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException

from hpcstack.client.api import Client, check
from hpcstack.client.config import load_config as client_config
from hpcstack.client.quick import human
from hpcstack.errors import UserError
from hpcstack.portal.compose import FILENAME, Composed, ComposeForm, Problem, checked, compose
from hpcstack.portal.config import PortalConfig
from hpcstack.service.models import name_problem, path_problem

STATIC = Path(__file__).parent / "static"
STATES = {
    "queued": "Queued: waiting for a free builder",
    "running": "Running: building now",
    "ready": "Ready",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "interrupted": "Interrupted",
}


class CheckRequest(BaseModel):
    text: str
    filename: str = FILENAME


def templates() -> Environment:
    env = Environment(loader=PackageLoader("hpcstack.portal", "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
    env.filters["human"] = human
    env.filters["when"] = lambda t: (t or "")[:16].replace("T", " ")
    env.globals["STATES"] = STATES
    return env


def status_of(detail: str) -> int:
    if detail.endswith("no such container"):
        return 404
    return 502 if detail.startswith("cannot reach the build service") else 400


def same_origin(headers) -> bool:  # type: ignore[no-untyped-def]
    """A browser's cross-site request (a form or WebSocket from another site) is refused:
    the page acts with the user's own credential."""
    origin = headers.get("origin")
    if not origin:
        return True
    host = headers.get("x-forwarded-host") or headers.get("host") or ""
    return urlsplit(origin).netloc == host.split(",")[0].strip()


def create_app(config: PortalConfig, base_uri: str = "/") -> FastAPI:
    """The page's application: pages, JSON helpers and WebSockets under ``base_uri``."""
    prefix = "/" + base_uri.strip("/") if base_uri.strip("/") else ""
    client = Client(client_config(config.server))
    env = templates()
    app = FastAPI(title=config.title, docs_url=None, redoc_url=None, openapi_url=None)
    router = APIRouter()

    def page(name: str, status: int = 200, **ctx) -> HTMLResponse:
        html = env.get_template(name).render(base=prefix, title=config.title, **ctx)
        return HTMLResponse(html, status_code=status)

    def error_page(detail: str) -> HTMLResponse:
        return page("error.html", status_of(detail), message=detail)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.method not in ("GET", "HEAD") and not same_origin(request.headers):
            return JSONResponse({"detail": "refused: a request from another site"}, 403)
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError) -> HTMLResponse | JSONResponse:
        """The service's one line, as JSON for the page's scripts, else as a page."""
        detail = str(err).splitlines()[0]
        if request.url.path.startswith(f"{prefix}/api/"):
            return JSONResponse({"detail": detail}, status_of(detail))
        return error_page(detail)

    # --- pages -------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def containers(deleted: str | None = None) -> HTMLResponse:
        shown = deleted if deleted and not name_problem(deleted) else None  # a name, no text
        return page("list.html", containers=client.list(), deleted=shown)

    @router.get("/new", response_class=HTMLResponse)
    def new() -> HTMLResponse:
        return page("new.html", bases=config.bases, max_upload=config.max_upload,
                    filename=FILENAME)

    @router.get("/c/{name}", response_class=HTMLResponse)
    def container(name: str) -> HTMLResponse:
        return page("container.html", c=client.status(valid(name)), note=None)

    @router.post("/c/{name}/cancel")
    def cancel(name: str) -> RedirectResponse:
        client.cancel(valid(name))
        return RedirectResponse(f"{prefix}/c/{quote(name)}", 303)

    @router.get("/c/{name}/delete", response_class=HTMLResponse)
    def confirm_delete(name: str) -> HTMLResponse:
        return page("delete.html", c=client.status(valid(name)))

    @router.post("/c/{name}/delete")
    def delete(name: str) -> RedirectResponse:
        client.delete(valid(name))
        return RedirectResponse(f"{prefix}/?{urlencode({'deleted': name})}", 303)

    @router.post("/c/{name}/sandbox")
    def sandbox(name: str, new_name: Annotated[str, Form()]) -> RedirectResponse:
        """A writable sandbox from a ready image (``u2cb create -n NEW -b NAME``)."""
        client.create(valid(new_name.strip()), valid(name))
        return RedirectResponse(f"{prefix}/c/{quote(new_name.strip())}", 303)

    @router.post("/c/{name}/module", response_class=HTMLResponse)
    def module(name: str, commands: Annotated[str, Form()] = "") -> HTMLResponse:
        """``u2cb module -n NAME --commands …``: the image as the user's own module."""
        from hpcstack.client.main import deploy_module

        wanted = [c.strip() for c in commands.split(",") if c.strip()] or None
        report, mine = deploy_module(client, valid(name), wanted, None, quiet=True)
        [done] = report.deployed
        note = (f"Module {done.module} made with {', '.join(done.commands)}. Use it: "
                f"module use {mine.modulepath}; module load {name}")
        return page("container.html", c=client.status(name), note=note)

    @router.get("/c/{name}/download")
    def download(name: str) -> StreamingResponse:
        """The SIF, packed by the service and streamed through (``u2cb download``)."""
        art = client.pack(valid(name))

        def body():  # type: ignore[no-untyped-def]
            with client.stream(f"/containers/{quote(name)}/image", {}) as resp:
                check(resp)
                yield from resp.iter_raw(1 << 20)

        return StreamingResponse(body(), media_type="application/octet-stream", headers={
            "Content-Length": str(art["size"]), "X-Checksum-Sha256": art["sha256"],
            "Content-Disposition": f'attachment; filename="{name}.sif"'})

    # --- JSON for the page's scripts ---------------------------------------------------

    @router.get("/api/containers")
    def api_containers() -> dict:
        return {"containers": client.list()}

    @router.post("/api/compose")
    def api_compose(form: ComposeForm) -> Composed:
        return compose(form)

    @router.post("/api/check")
    def api_check(req: CheckRequest) -> dict:
        return {"problems": checked(req.text, req.filename)}

    @router.post("/api/build")
    def api_build(name: Annotated[str, Form()], mode: Annotated[str, Form()],
                  base: Annotated[str, Form()] = "", definition: Annotated[str, Form()] = "",
                  filename: Annotated[str, Form()] = FILENAME,
                  files: Annotated[list[UploadFile] | None, File()] = None) -> JSONResponse:
        """Start a build: a sandbox from a base, or an image from the definition (checked
        first: a definition with problems starts nothing)."""
        name = name.strip()
        if problem := name_problem(name):
            return problems([Problem(field="name", message=problem)])
        if mode == "sandbox":
            made = client.create(name, base.strip())
        else:
            if problem := path_problem(filename, "filename", single=True):
                return problems([Problem(field="filename", message=problem)])
            found = checked(definition, filename)
            if found:
                return problems(found)
            made = send_definition(client, name, filename, definition, files or [])
        return JSONResponse({"name": made["name"], "url": f"{prefix}/c/{quote(name)}"}, 202)

    # --- WebSockets: the service's own, relayed ------------------------------------------

    @router.websocket("/c/{name}/log/ws")
    async def log_ws(ws: WebSocket, name: str, skip: int = 0) -> None:
        """The build log as it grows; ``skip``: characters the page already has."""
        if not await accepted(ws):
            return
        url = client.ws_url(f"/containers/{quote(name)}/log/ws")
        if not await relay(ws, client, url, lambda up: follow_log(ws, up, max(0, skip))):
            return
        with contextlib.suppress(Exception):
            info = await asyncio.to_thread(client.status, name)
            await ws.send_json({"done": True, "state": info["state"],
                                "reason": info.get("reason")})
        with contextlib.suppress(Exception):
            await ws.close()

    @router.websocket("/c/{name}/connect/ws")
    async def connect_ws(ws: WebSocket, name: str, rows: int = 24, cols: int = 80) -> None:
        """A root shell in the sandbox (``u2cb connect``): bytes both ways, resize, exit."""
        if not await accepted(ws):
            return
        query = urlencode({"rows": rows, "cols": cols, "term": "xterm-256color"})
        url = client.ws_url(f"/containers/{quote(name)}/connect") + "?" + query
        await relay(ws, client, url, lambda up: terminal(ws, up))
        with contextlib.suppress(Exception):
            await ws.close()

    app.include_router(router, prefix=prefix)
    app.mount(f"{prefix}/static", StaticFiles(directory=STATIC), name="static")
    if prefix:
        @app.get("/")
        def root() -> RedirectResponse:
            return RedirectResponse(f"{prefix}/", 307)
    return app


def valid(name: str) -> str:
    if problem := name_problem(name):
        raise UserError(problem)
    return name


def problems(found: list[Problem]) -> JSONResponse:
    return JSONResponse({"detail": found[0].message,
                         "problems": [p.model_dump() for p in found]}, 422)


def send_definition(client: Client, name: str, filename: str, text: str,
                    files: list[UploadFile]) -> dict:
    """``u2cb defcreate``: the uploads (the ``%files`` sources) streamed on from a private
    temporary directory, each under its own file name."""
    work = Path(tempfile.mkdtemp(prefix="u2cb-portal-"))
    try:
        uploads = []
        for upload in files:
            rel = Path(upload.filename or "").name
            if problem := path_problem(rel, "files"):
                raise UserError(problem)
            with (work / rel).open("wb") as out:
                shutil.copyfileobj(upload.file, out, 1 << 20)
            uploads.append((rel, work / rel))
        return client.defcreate(name, filename, text.encode(), uploads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def accepted(ws: WebSocket) -> bool:
    if not same_origin(ws.headers):
        await ws.close(code=1008)
        return False
    await ws.accept()
    return True


async def relay(ws: WebSocket, client: Client, url: str, pump) -> bool:  # type: ignore[no-untyped-def]
    """Open the service's WebSocket as the user and run ``pump`` until either side ends;
    False when the service could not be reached or refused (the page is told why)."""
    try:
        headers = await asyncio.to_thread(client.auth_headers)
        async with ws_connect(url, additional_headers=headers, max_size=None,
                              open_timeout=30) as up:
            return await pump(up)
    except UserError as err:
        with contextlib.suppress(Exception):
            await ws.send_json({"error": str(err)})
    except (OSError, InvalidStatus, WebSocketException) as err:
        with contextlib.suppress(Exception):
            await ws.send_json({"error": f"cannot reach the build service: {err}"})
    except WebSocketDisconnect:
        pass
    return False


async def until_either(*coros) -> bool:  # type: ignore[no-untyped-def]
    """Run both directions until one ends; True when the first one (the service's) did."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() and not isinstance(task.exception(), WebSocketDisconnect):
                raise task.exception()  # type: ignore[misc]
        return tasks[0] in done and not tasks[0].exception() and bool(tasks[0].result())
    finally:
        for task in tasks:
            task.cancel()


async def page_gone(ws: WebSocket) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


async def follow_log(ws: WebSocket, up, skip: int) -> bool:  # type: ignore[no-untyped-def]
    """Pass the log on as ``{"text", "seen"}``; ``seen`` counts characters from the start,
    so a page that lost its connection asks again from where it was."""

    async def pump() -> bool:
        seen = 0
        async for msg in up:
            text = msg if isinstance(msg, str) else msg.decode(errors="replace")
            if seen == 0 and text.startswith('{"error"'):
                with contextlib.suppress(ValueError):
                    await ws.send_json({"error": json.loads(text)["error"]})
                    return False
            start, seen = seen, seen + len(text)
            if seen > skip:
                await ws.send_json({"text": text[max(0, skip - start):], "seen": seen})
        return True

    return await until_either(pump(), page_gone(ws))


async def terminal(ws: WebSocket, up) -> bool:  # type: ignore[no-untyped-def]
    async def down() -> bool:
        async for msg in up:
            if isinstance(msg, bytes):
                await ws.send_bytes(msg)
            else:
                await ws.send_text(msg)
        return True

    async def upward() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await up.send(msg["bytes"])
            elif msg.get("text") is not None:
                await up.send(msg["text"])

    return await until_either(down(), upward())
