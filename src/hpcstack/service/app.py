"""The U2CB REST API (FastAPI): containers, builds, logs, downloads, sessions, tokens.

Stateless: every request carries its own credential (MUNGE or an API token).
Users see and touch only their own containers; admins may pass ``owner=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import IntegrityError
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from hpcstack import __version__
from hpcstack.build.jail import Bind, JailSpec
from hpcstack.build.job import BuildRequest, job_argv, read_result, write_request
from hpcstack.deffile import Definition, parse
from hpcstack.errors import UserError
from hpcstack.files import tree_size, write_atomic
from hpcstack.service import auth, db, nodecheck, pidfile, recipes, store, uploads
from hpcstack.service.config import ANYONE, Settings
from hpcstack.service.executors import make_executor
from hpcstack.service.metrics import Metrics, RequestTimer
from hpcstack.service.models import (
    ACTIVE,
    INPUT_ERROR,
    Artifact,
    Container,
    ContainerList,
    ContainerName,
    CreateRequest,
    DefCreateForm,
    Error,
    Health,
    Identity,
    Kind,
    LogChunk,
    OwnerName,
    State,
    Token,
    TokenList,
    TokenRequest,
    name_problem,
    path_problem,
    shown,
    upload_problem,
)
from hpcstack.service.queue import CANCEL_REQUESTED, Scheduler
from hpcstack.service.signing import SiteSigner, site_signer

log = logging.getLogger("u2cb")
DOWNLOAD_CHUNK = 4 << 20
API = "/api/v1"


class NameConvertor(Convertor[str]):
    """A ``{name:cname}`` path segment: any one but ``def`` (``/containers/def`` is
    defcreate), so a 405 there names only defcreate's method.  The name's own rules are
    checked by the route (422 with the reason)."""

    regex = r"(?!def(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("cname", NameConvertor())


class ServiceError(Exception):
    """An error the caller caused: HTTP ``status`` with a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Service:
    settings: Settings
    db: db.Database
    scheduler: Scheduler
    open_sessions: Counter[int]  # connect sessions per UID, on this instance
    metrics: Metrics
    signer: SiteSigner | None = None  # the site key, when one is configured
    pack_locks: dict[int, threading.Lock] = field(default_factory=dict)

    def paths(self, key: int) -> store.Paths:
        return store.Paths(self.settings.containers_dir(), key)


def responses(*codes: int) -> dict:
    return {c: {"model": Error} for c in (400, 401, 422, *codes)}


def create_app(settings: Settings) -> FastAPI:
    """The application with its own database, scheduler and executor."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)  # users reach their files only through the API
    for d in (settings.containers_dir(), settings.tmp_dir(), settings.data_dir / "cache"):
        d.mkdir(parents=True, exist_ok=True)
    database = db.Database(settings.db_url)
    database.create_all()
    executor = make_executor(settings.executor, settings.slurm_partition)
    sessions: Counter[int] = Counter()
    metrics = Metrics(database, lambda: sum(sessions.values()))
    signer = site_signer(settings)
    svc = Service(settings, database,
                  Scheduler(settings, database, executor, sessions_of=sessions.__getitem__,
                            metrics=metrics, signer=signer),
                  sessions, metrics, signer=signer)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.scheduler.start()
        checks = asyncio.create_task(asyncio.to_thread(nodecheck.log_problems, settings))
        yield
        checks.cancel()
        await asyncio.to_thread(svc.scheduler.shutdown)
        database.dispose()
        pidfile.release(settings.pid_path)

    app = FastAPI(title="U2CB build service", version=__version__, lifespan=lifespan,
                  openapi_url=f"{API}/openapi.json", docs_url=f"{API}/docs",
                  redoc_url=None,
                  description="Unprivileged container builds: sandboxes from base images, "
                  "images from definition files, interactive fakeroot sessions.")
    app.state.svc = svc
    app.add_middleware(RequestTimer, metrics=lambda: svc.metrics)
    clear_staging(svc)
    install_handlers(app)
    add_routes(app, svc)
    return app


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_r: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer, Munge"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(UserError)
    async def _user_error(_r: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:  # Starlette names the methods of one route only
            allow = ", ".join(sorted(methods_at(request.app, request.scope)))
            exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}),
                                                                   "Allow": allow})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)


def methods_at(app: FastAPI, scope: dict) -> set[str]:
    """Every HTTP method some route serves at the scope's path (for a 405's ``Allow``)."""
    found: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and \
                route.matches(scope)[0] is not Match.NONE:
            found |= route.methods
    return found


def validation_detail(errors: list) -> str:
    """The first validation error as one line naming its field."""
    first = errors[0] if errors else {}
    msg = str(first.get("msg", "invalid"))
    if first.get("type") != INPUT_ERROR:  # ours already name the field
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query",
                                                                         "path", "header"))
        msg = f"{where}: {msg}"
    return " ".join(msg.split())


# --- identity and lookup ---------------------------------------------------------------


def who(svc: Service, headers) -> Identity:
    try:
        return auth.identify(headers, svc.db, svc.settings.munge_socket,
                             svc.settings.admin_users)
    except auth.AuthError as err:
        raise ServiceError(401, str(err)) from None


def owner_uid(ident: Identity, owner: str | None) -> int:
    """The UID whose containers a request addresses: one's own unless an admin says."""
    if owner is None or owner == ident.user:
        return ident.uid
    if not ident.admin:
        raise ServiceError(403, "only admins may act on other users' containers")
    try:
        return auth.user_uid(owner)
    except ValueError as err:
        raise ServiceError(404, str(err)) from None


def may_read_metrics(svc: Service, request: Request) -> None:
    """Anyone when ``metrics_readers`` holds ``*``; else those users and the admins."""
    readers = svc.settings.metrics_readers
    if ANYONE not in readers:
        me = who(svc, request.headers)
        if not me.admin and me.user not in readers:
            raise ServiceError(403, f"{me.user} may not read the metrics "
                               "(setting metrics_readers)")


def need_admin(ident: Identity) -> None:
    if not ident.admin:
        raise ServiceError(403, "only admins may manage API tokens")


def checked_name(name: str) -> str:
    problem = name_problem(name)
    if problem:
        raise ServiceError(422, problem)
    return name


def lookup(svc: Service, uid: int, name: str) -> db.ContainerRow:
    checked_name(name)
    with svc.db.session() as s:
        row = db.find(s, uid, name)
    if row is None:
        raise ServiceError(404, f"{name}: no such container")
    return row


def image_resolver(svc: Service, uid: int):
    """NAME -> the path of that container's image (SIF or sandbox), for localimage."""

    def resolve(name: str) -> str | None:
        with svc.db.session() as s:
            row = db.find(s, uid, name)
        if row is None or row.state != State.READY.value:
            return None
        p = svc.paths(row.id)
        return str(p.image if row.kind == Kind.DEF.value else p.sandbox)

    return resolve


def checked_build(svc: Service, uid: int, text: str, filename: str,
                  uploads: set[str]) -> tuple[Definition, list[str]]:
    """Parse and check once: the model the build gets, and the images it may read."""
    try:
        defn = recipes.check_definition(text, filename, uploads)
        return recipes.resolve_sources(defn, filename, uploads, image_resolver(svc, uid))
    except UserError as err:
        raise ServiceError(422, str(err).splitlines()[0]) from None


def check_quota(svc: Service, uid: int, incoming: int) -> None:
    with svc.db.session() as s:
        used = db.usage(s, uid)
    quota = svc.settings.quota_bytes
    if used + incoming > quota:
        raise ServiceError(507, f"disk quota full: {used} of {quota} bytes used, "
                           f"{incoming} more requested; delete containers to free space")


@contextlib.contextmanager
def inserted(svc: Service, uid: int, name: str, kind: Kind, source: str,
             usage: int = 0) -> Iterator[db.ContainerRow]:
    """A queued container record, committed only once the with-block has put its files in
    place (``svc.paths(row.id).dir``); 409 when the name is taken.

    Until the commit no other request and no scheduler sees the record; when the block or
    the commit fails there is neither a record nor its directory.
    """
    where: Path | None = None
    try:
        with svc.db.session() as s:
            if db.find(s, uid, name) is not None:
                raise ServiceError(409, f"{name}: a container with this name exists; "
                                   "delete it first")
            row = db.ContainerRow(uid=uid, owner=auth.user_name(uid), name=name,
                                  kind=kind.value, source=source, state=State.QUEUED.value,
                                  attempts=0, usage=usage)
            s.add(row)
            s.flush()
            where = svc.paths(row.id).dir
            if where.exists():  # left by a deleted record whose id the database reused
                store.remove(where)
            yield row
    except BaseException as exc:
        if where is not None and where.exists():
            store.remove(where)
        if isinstance(exc, IntegrityError):
            raise ServiceError(409, f"{name}: a container with this name exists") from None
        raise


# --- routes ----------------------------------------------------------------------------


def ident(request: Request) -> Identity:
    """The dependency every authenticated route takes."""
    return who(request.app.state.svc, request.headers)


Who = Annotated[Identity, Depends(ident)]
Owner = Annotated[OwnerName | None, Query(description="admins: whose containers")]


def add_routes(app: FastAPI, svc: Service) -> None:

    @app.get(f"{API}/health", response_model=Health, response_model_exclude_none=True,
             responses=responses(403), tags=["service"])
    def health(request: Request, deep: Annotated[bool, Query(
            description="also run hpcstack doctor's node checks (readers: the "
            "metrics_readers setting)")] = False) -> Health:
        """Liveness, with the executor and database kind (no credential needed); with
        ``deep=1`` every node check, and ``degraded`` when one failed."""
        health = Health(status="ok", version=__version__, executor=svc.settings.executor,
                        database=svc.db.dialect)
        if deep:
            may_read_metrics(svc, request)
            health.checks = nodecheck.node_checks(svc.settings)
            if any(c.status == "fail" for c in health.checks):
                health.status = "degraded"
        return health

    @app.get("/metrics", response_class=Response, responses={
        **responses(403), 200: {"content": {CONTENT_TYPE_LATEST: {}}}}, tags=["service"])
    def metrics(request: Request) -> Response:
        """Prometheus metrics (text format); readers per the ``metrics_readers`` setting."""
        may_read_metrics(svc, request)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(f"{API}/whoami", response_model=Identity, responses=responses(), tags=["service"])
    def whoami(me: Who) -> Identity:
        """Who the service takes you for."""
        return me

    @app.get(f"{API}/containers", response_model=ContainerList, responses=responses(403),
             tags=["containers"])
    def list_containers(me: Who, kind: Kind | None = None, owner: Owner = None,
                        all_users: Annotated[bool, Query(alias="all")] = False
                        ) -> ContainerList:
        """Your containers (``kind``: def or img); admins may list everyone's."""
        if all_users and not me.admin:
            raise ServiceError(403, "only admins may list all users' containers")
        uid = None if all_users else owner_uid(me, owner)
        with svc.db.session() as s:
            rows = db.listing(s, uid, kind)
        return ContainerList(containers=[r.model() for r in rows])

    @app.post(f"{API}/containers", response_model=Container, status_code=202,
              responses=responses(403, 404, 409, 507), tags=["containers"])
    def create(me: Who, req: CreateRequest) -> Container:
        """A writable sandbox from a base image (``u2cb create -n NAME -b BASE``)."""
        name = checked_name(req.name)
        if "://" not in req.base and image_resolver(svc, me.uid)(req.base) is None:
            raise ServiceError(404, f"base {shown(req.base)}: no ready container of yours with "
                               "that name")
        text = recipes.base_definition(req.base)
        defn, readable = checked_build(svc, me.uid, text, "base.def", set())
        check_quota(svc, me.uid, 0)
        with inserted(svc, me.uid, name, Kind.IMG, req.base) as row:
            paths = svc.paths(row.id)
            write_atomic(paths.defdir / "base.def", text.encode())
            write_request(recipes.build_request(
                svc.settings, paths, me.uid, name="base.def", defn=defn, text=text,
                sandbox=True, readable=readable), paths.request)
        svc.scheduler.wake.set()
        return row.model()

    @app.post(f"{API}/containers/def", response_model=Container, status_code=202,
              responses=responses(403, 404, 409, 413, 507), tags=["containers"],
              openapi_extra=DEFCREATE_BODY)
    async def defcreate(request: Request, me: Who) -> Container:
        """An image from a definition file, with the files its ``%files`` names.

        The body is read as it arrives, each file straight to a staging directory, and
        refused (413) as soon as it passes ``--max-upload``.  The record is made only
        once every field is valid and every file is in place.
        """
        limit = svc.settings.max_upload_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ServiceError(413, uploads.too_large(int(length), limit).detail)
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(svc),
                                        dir=svc.settings.tmp_dir()))
        try:
            try:
                got = await uploads.receive(request.stream(),
                                            request.headers.get("content-type"), staging, limit)
            except uploads.UploadError as err:
                raise ServiceError(err.status, err.detail) from None
            except ClientDisconnect:
                raise ServiceError(400, "body: the client went away mid-upload") from None
            row = await asyncio.to_thread(place_definition, svc, me, got, staging)
        finally:
            await asyncio.to_thread(uploads.discard, staging)
        svc.scheduler.wake.set()
        return row.model()

    @app.get(f"{API}/containers/{{name:cname}}", response_model=Container,
             responses=responses(403, 404), tags=["containers"])
    def status(me: Who, name: ContainerName, owner: Owner = None) -> Container:
        """One container: its state, and why it failed."""
        return lookup(svc, owner_uid(me, owner), name).model()

    @app.post(f"{API}/containers/{{name:cname}}/cancel", response_model=Container,
              responses=responses(403, 404, 409), tags=["containers"])
    def cancel(me: Who, name: ContainerName, owner: Owner = None) -> Container:
        """Stop a queued or running build; its whole process tree ends."""
        row = lookup(svc, owner_uid(me, owner), name)
        if State(row.state) not in ACTIVE:
            raise ServiceError(409, f"{name}: nothing to cancel, the build is {row.state}")
        cancel_build(svc, row)
        return lookup(svc, row.uid, name).model()

    @app.delete(f"{API}/containers/{{name:cname}}", status_code=204,
                responses=responses(403, 404), tags=["containers"])
    def delete(me: Who, name: ContainerName, owner: Owner = None) -> Response:
        """Remove a container, its build and its files."""
        row = lookup(svc, owner_uid(me, owner), name)
        if State(row.state) in ACTIVE:
            cancel_build(svc, row)
        with svc.db.session() as s:
            r = s.get(db.ContainerRow, row.id)
            if r is not None:
                s.delete(r)
        store.remove(svc.paths(row.id).dir)
        return Response(status_code=204)

    @app.get(f"{API}/containers/{{name:cname}}/log", response_model=LogChunk,
             responses=responses(403, 404), tags=["builds"])
    def build_log(me: Who, name: ContainerName, owner: Owner = None,
                  offset: Annotated[int, Query(ge=0, le=2**40)] = 0) -> LogChunk:
        """The build log from byte ``offset`` (poll with ``next_offset`` to follow it)."""
        row = lookup(svc, owner_uid(me, owner), name)
        return read_log(svc, row, offset)

    @app.post(f"{API}/containers/{{name:cname}}/pack", response_model=Artifact,
              responses=responses(403, 404, 409), tags=["images"])
    def pack(me: Who, name: ContainerName, owner: Owner = None) -> Artifact:
        """Make the SIF ``download`` fetches (packing a sandbox); its size and sha256."""
        row = lookup(svc, owner_uid(me, owner), name)
        return artifact(svc, row)

    @app.get(f"{API}/containers/{{name:cname}}/image", response_class=FileResponse,
             responses={**responses(403, 404, 409),
                        200: {"content": {"application/octet-stream": {}}},
                        206: {"content": {"application/octet-stream": {}}}},
             tags=["images"])
    def download(me: Who, name: ContainerName, owner: Owner = None) -> FileResponse:
        """The SIF (``Range`` requests resume a download); call ``pack`` first."""
        row = lookup(svc, owner_uid(me, owner), name)
        path, sha = artifact_path(svc, row)
        if path is None:
            raise ServiceError(409, f"{name}: not packed yet; POST .../pack first")
        response = FileResponse(path, media_type="application/octet-stream",
                                filename=f"{name}.sif",
                                headers={"X-Checksum-Sha256": sha or ""})
        response.chunk_size = DOWNLOAD_CHUNK  # Starlette's 64 KiB costs a thread hop each
        return response

    @app.post(f"{API}/tokens", response_model=Token, status_code=201,
              responses=responses(403, 404), tags=["admin"])
    def new_token(me: Who, req: TokenRequest) -> Token:
        """An API token acting as ``user`` (for web portals); admins only."""
        need_admin(me)
        try:
            uid = auth.user_uid(req.user)
        except ValueError as err:
            raise ServiceError(404, str(err)) from None
        token, info = auth.issue_token(svc.db, req.user, uid, req.admin)
        return Token(token=token, **info.model_dump())

    @app.get(f"{API}/tokens", response_model=TokenList, responses=responses(403),
             tags=["admin"])
    def tokens(me: Who) -> TokenList:
        """Every issued API token (ids, not secrets); admins only."""
        need_admin(me)
        return TokenList(tokens=auth.list_tokens(svc.db))

    @app.delete(f"{API}/tokens/{{token_id}}", status_code=204,
                responses=responses(403, 404), tags=["admin"])
    def revoke(me: Who, token_id: str) -> Response:
        """Revoke a token at once: its next request gets 401; admins only."""
        need_admin(me)
        if not auth.revoke_token(svc.db, token_id):
            raise ServiceError(404, f"token {token_id}: no such token")
        return Response(status_code=204)

    from hpcstack.service import sessions

    sessions.add_websockets(app, svc)


# --- defcreate: from a received body to a record ----------------------------------------

DEFCREATE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": DefCreateForm.model_json_schema()}}}}


def staging_prefix(svc: Service) -> str:
    """Staging directories of this instance (several may share one data directory)."""
    return f"upload-{svc.settings.instance.replace(':', '_')}-"


def clear_staging(svc: Service) -> None:
    """Remove what uploads of this instance left behind when it last stopped."""
    for stale in svc.settings.tmp_dir().glob(staging_prefix(svc) + "*"):
        uploads.discard(stale)


def only(values: list, field_name: str):
    if not values:
        raise ServiceError(422, f"{field_name}: field required")
    if len(values) > 1:
        raise ServiceError(422, f"{field_name}: given {len(values)} times, once expected")
    return values[0]


def upload_layout(paths: list[str], filename: str) -> None:
    """Every path valid, none twice, none inside another upload or the definition."""
    for p in paths:
        if problem := upload_problem(p):
            raise ServiceError(422, problem)
    taken = {filename: "the definition"}
    for p in paths:
        if p in taken:
            why = "given twice" if taken[p] != "the definition" else "the definition's name"
            raise ServiceError(422, f"paths {shown(p)}: {why}")
        taken[p] = "an uploaded file"
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if above in taken:
                raise ServiceError(422, f"paths {shown(p)}: inside {shown(above)}, which is "
                                   f"{taken[above]}")


def place_definition(svc: Service, me: Identity, got: uploads.Received,
                     staging: Path) -> db.ContainerRow:
    """Check what a defcreate body held, lay it out in ``staging``, then make the record
    and move ``staging`` into the container's directory (one rename)."""
    name = checked_name(only(got.name, "name"))
    definition = only(got.definition, "definition")
    filename = "build.def" if definition.filename is None else definition.filename
    if problem := path_problem(filename, "definition", single=True):
        raise ServiceError(422, problem)
    if len(got.files) != len(got.paths):
        raise ServiceError(422, f"paths: one path per uploaded file ({len(got.files)} "
                           f"files, {len(got.paths)} paths)")
    upload_layout(got.paths, filename)
    text_bytes = definition.path.read_bytes()
    try:
        text = text_bytes.decode()
    except UnicodeDecodeError:
        raise ServiceError(422, "definition: not UTF-8 text") from None
    defn, readable = checked_build(svc, me.uid, text, filename, set(got.paths))
    check_quota(svc, me.uid, got.file_bytes)
    defdir = staging / "def"  # the container's directory to be: def/, submitted.def
    defdir.mkdir()
    for upload, rel in zip(got.files, got.paths, strict=True):
        (defdir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(upload.path, defdir / rel)
    os.rename(definition.path, staging / "submitted.def")
    write_atomic(defdir / filename, text_bytes)  # named as the user's, for messages
    uploads.discard(staging / "parts")  # what is left: parts of fields we do not take
    with inserted(svc, me.uid, name, Kind.DEF, filename, usage=got.file_bytes) as row:
        paths = svc.paths(row.id)
        os.rename(staging, paths.dir)
        write_request(recipes.build_request(
            svc.settings, paths, me.uid, name=filename, defn=defn, text=text, sandbox=False,
            readable=readable), paths.request)
    return row


# --- helpers the routes share ----------------------------------------------------------


def cancel_build(svc: Service, row: db.ContainerRow) -> None:
    if svc.scheduler.cancel(row.id):
        return
    with svc.db.session() as s:
        r = s.get(db.ContainerRow, row.id)
        if r is not None and r.state == State.QUEUED.value:
            r.state, r.reason, r.finished = State.CANCELLED.value, "cancelled by the user", \
                db.now()
            svc.metrics.ended(r.state, None, r.finished)
        elif r is not None and r.state == State.RUNNING.value:
            r.reason = CANCEL_REQUESTED  # the instance running it stops it within a tick


def read_log(svc: Service, row: db.ContainerRow, offset: int, limit: int = 1 << 20) -> LogChunk:
    data = b""
    with contextlib.suppress(OSError), own_file(svc.paths(row.id).log) as fh:
        fh.seek(offset)
        data = fh.read(limit)
    with svc.db.session() as s:
        r = s.get(db.ContainerRow, row.id)
        state = State(r.state) if r else State.FAILED
    done = state not in ACTIVE and len(data) < limit
    return LogChunk(text=data.decode(errors="replace"), offset=offset,
                    next_offset=offset + len(data), done=done)


def own_file(path: Path):
    """``path`` opened for reading, never through a symbolic link (a second wall: no
    build or session can reach a container's directory to plant one)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def regular(path: Path) -> bool:
    """A regular file itself, not a link to one."""
    return path.is_file() and not path.is_symlink()


def artifact_path(svc: Service, row: db.ContainerRow) -> tuple[str | None, str | None]:
    p = svc.paths(row.id)
    if row.kind == Kind.DEF.value:
        return (str(p.image), row.sha256) if regular(p.image) else (None, None)
    sha_file = p.dir / "packed.sif.sha256"
    if regular(p.packed) and regular(sha_file):
        return str(p.packed), sha_file.read_text().strip()
    return None, None


def artifact(svc: Service, row: db.ContainerRow) -> Artifact:
    """The downloadable SIF: the built image, or the sandbox packed (again if changed)."""
    if row.state != State.READY.value:
        raise ServiceError(409, f"{row.name}: not ready (the build is {row.state})")
    p = svc.paths(row.id)
    if row.kind == Kind.DEF.value:
        return Artifact(name=row.name, size=p.image.stat().st_size, sha256=row.sha256 or "")
    lock = svc.pack_locks.setdefault(row.id, threading.Lock())
    with lock:
        changed = p.dir / "sandbox.changed"
        sha_file = p.dir / "packed.sif.sha256"
        fresh = p.packed.is_file() and sha_file.is_file() and not (
            changed.exists() and changed.stat().st_mtime >= p.packed.stat().st_mtime)
        if not fresh:
            pack_sandbox(svc, row, p)
        return Artifact(name=row.name, size=p.packed.stat().st_size,
                        sha256=sha_file.read_text().strip())


def pack_sandbox(svc: Service, row: db.ContainerRow, p: store.Paths) -> None:
    """The sandbox packed into a SIF by a build job, jailed like every build, no network."""
    store.remove(p.tmp)
    p.tmp.mkdir(parents=True, exist_ok=True)
    text = f"Bootstrap: localimage\nFrom: {row.name}\n"
    defn, _ = recipes.resolve_sources(parse(text), "pack.def", set(), lambda _: str(p.sandbox))
    spec = JailSpec(binds=[Bind(path=str(p.tmp), writable=True), Bind(path=str(p.sandbox))],
                    scratch=str(p.jail), network=False, cwd=str(p.tmp))
    request = BuildRequest(name=f"{row.name} (sandbox)", definition=defn, text=text,
                           output=str(p.packed), cwd=str(p.tmp), workdir=str(p.tmp),
                           cache_dir=str(p.tmp / "cache"), jail=spec,
                           result=str(p.dir / "pack-result.json"))
    path = write_request(request, p.dir / "pack-request.json")
    try:
        subprocess.run(job_argv(path), cwd=p.dir, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=svc.settings.build_time_limit, check=False)
    finally:
        store.remove(p.tmp)
    result = read_result(request.result)
    if result is None or result.error is not None or not result.sha256:
        why = str(result.error.exception()) if result and result.error else "packing failed"
        raise ServiceError(409, f"{row.name}: cannot pack the sandbox: {why}")
    sha256 = result.sha256
    if svc.signer is not None:
        try:
            sha256, _size = svc.signer.sign(p.packed)
        except UserError as err:
            raise ServiceError(409, f"{row.name}: cannot sign the packed image: {err}") from None
    write_atomic(p.dir / "packed.sif.sha256", sha256.encode())
    with svc.db.session() as s:
        r = s.get(db.ContainerRow, row.id)
        if r is not None:
            r.usage = tree_size(p.dir)


def dump(obj) -> str:
    return json.dumps(obj)


__all__ = ["ServiceError", "create_app"]
