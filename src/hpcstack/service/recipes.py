"""What a request asks to build, checked once before anything runs (pure, no I/O).

A definition is parsed and checked here, once, into the typed model; the
build job gets that model (:class:`~hpcstack.build.job.BuildRequest`), never
the text to parse again.  A definition may only read what the user uploaded
with it — ``%files`` sources and archive ``From:`` paths are relative paths
among the uploads — and ``Bootstrap: localimage`` names one of the user's own
containers.  The jail (:mod:`hpcstack.build.jail`) holds exactly those.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable

from hpcstack.build.jail import Bind, JailSpec
from hpcstack.build.job import BuildRequest, Limits
from hpcstack.deffile import Definition, Stage, check, parse
from hpcstack.deffile.model import DefFileError, show
from hpcstack.errors import UserError
from hpcstack.service.config import Settings
from hpcstack.service.models import name_problem, upload_problem
from hpcstack.service.store import Paths


def check_definition(text: str, filename: str, uploads: set[str]) -> Definition:
    """Parse ``text``; raise one ``FILE:LINE: message`` UserError for the first problem."""
    problems = check(text, filename)
    if problems:
        raise UserError(str(problems[0]))
    defn = parse(text, filename)
    for stage in defn.stages:
        for section in stage.files:
            if section.stage is not None:
                continue
            for t in section.transfers:
                _check_transfer(filename, t.line, t.src, uploads)
    return defn


def _check_transfer(filename: str, line: int, src: str, uploads: set[str]) -> None:
    if src.startswith(("/", "~")) or ".." in src.split("/"):
        raise DefFileError(filename, line, f"%files: {src}: the build service takes only "
                           "paths relative to the definition file (they are uploaded)")
    if not uploaded(src, uploads):
        raise DefFileError(filename, line, f"%files: {src}: not uploaded with the definition")


ARCHIVE_AGENTS = ("oci", "oci-archive", "docker-archive")


def resolve_sources(defn: Definition, filename: str, uploads: set[str],
                    resolve: Callable[[str], str | None]) -> tuple[Definition, list[str]]:
    """The definition with every local ``From:`` pinned, and the paths the build may read.

    ``localimage`` names one of the user's containers (``resolve`` maps a name to
    its image on the service, None when the user has none such); ``oci``,
    ``oci-archive`` and ``docker-archive`` name a file uploaded with the definition.
    Anything else — a host path above all — is refused with the line it is on.
    The model is changed, never the text: what was checked is what is built.
    """
    stages, readable = [], []
    for stage in defn.stages:
        agent, ref = stage.bootstrap, stage.get("From") or ""
        line = stage.line_of("From")
        if agent == "localimage":
            path = None if name_problem(ref) else resolve(ref)
            if path is None:
                raise DefFileError(filename, line, f"From: {show(ref)}: localimage must name "
                                   "one of your containers on the build service")
            readable.append(path)
            stage = replace_header(stage, "From", path)
        elif agent in ARCHIVE_AGENTS:
            local = ref.split(":", 1)[0] if agent == "oci" else ref
            if not local or upload_problem(local) or not uploaded(local, uploads):
                raise DefFileError(filename, line, f"From: {show(ref)}: {agent} must name a "
                                   "file uploaded with the definition (a relative path)")
        stages.append(stage)
    return Definition(tuple(stages)), readable


def uploaded(src: str, uploads: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(u, src) or u.startswith(src.rstrip("/") + "/")
               for u in uploads)


def replace_header(stage: Stage, key: str, value: str) -> Stage:
    header = tuple((k, value if k.lower() == key.lower() else v) for k, v in stage.header)
    return dataclasses.replace(stage, header=header)


def base_definition(base: str) -> str:
    """The one-stage definition ``create -b BASE`` builds a sandbox from.

    >>> base_definition("debootstrap://bookworm")
    'Bootstrap: debootstrap\\nOSVersion: bookworm\\n'
    """
    scheme, sep, rest = base.partition("://")
    if sep and scheme == "docker":
        if not rest or any(c.isspace() or not c.isprintable() for c in rest):
            raise UserError(f"base {show(base)}: expected docker://REGISTRY/IMAGE:TAG")
        return f"Bootstrap: docker\nFrom: {rest}\n"
    if sep and scheme == "debootstrap":
        if not rest.replace("-", "").isalnum() or not rest.isascii():
            raise UserError(f"base {show(base)}: expected debootstrap://SUITE (e.g. bookworm)")
        return f"Bootstrap: debootstrap\nOSVersion: {rest}\n"
    if sep:
        raise UserError(f"base {show(base)}: use docker://REF, debootstrap://SUITE or the "
                        "name of one of your containers")
    if name_problem(base):
        raise UserError(f"base {show(base)}: no container of yours with that name")
    return f"Bootstrap: localimage\nFrom: {base}\n"


def build_request(settings: Settings, paths: Paths, uid: int, *, name: str, defn: Definition,
                  text: str, sandbox: bool, readable: list[str]) -> BuildRequest:
    """The job that builds one container, jailed: what it may read, write and reach."""
    cache = settings.cache_dir(uid)
    binds = [Bind(path=str(paths.tmp), writable=True), Bind(path=str(cache), writable=True),
             Bind(path=str(paths.defdir))]
    binds += [Bind(path=p) for p in readable]
    if settings.docker_cert_dir:
        binds.append(Bind(path=settings.docker_cert_dir))
    spec = JailSpec(binds=binds, scratch=str(paths.jail), network=settings.build_network,
                    loopback_ports=settings.build_loopback_ports, cwd=str(paths.defdir))
    return BuildRequest(name=name, definition=defn, text=text,
                        output=str(paths.sandbox if sandbox else paths.image), sandbox=sandbox,
                        run_test=not sandbox, cwd=str(paths.defdir), workdir=str(paths.tmp),
                        cache_dir=str(cache), docker_cert_dir=settings.docker_cert_dir,
                        jail=spec, log=str(paths.log), result=str(paths.result),
                        limits=Limits(log_bytes=settings.build_log_bytes))
