"""One build job: a typed request in, a typed result out.

Whoever needs a build run somewhere else — the U2CB service's executors (local
or Slurm), packing a sandbox for download, the catalog's Slurm path — writes a
:class:`BuildRequest` as JSON and runs::

    python -m hpcstack.build.job REQUEST.json

which writes a :class:`BuildResult` to ``request.result`` and exits 0 when the
build succeeded.  Nobody scrapes a log for errors or rebuilds a command line.

Outside (as the submitting account) the job starts the build — in a jail
(:mod:`hpcstack.build.jail`) when the request carries one — copies its output
to the log up to a cap, watches its disk use, and once the build succeeded
moves the output into place (never through a symbolic link the build made)
and records its size and sha256.  Inside, it calls the builder directly with
the definition the submitter parsed and checked: there is no second parse.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from hpcstack.build.jail import JailSpec
from hpcstack.build.plan import Compression, PlanError
from hpcstack.deffile import Definition
from hpcstack.errors import UserError
from hpcstack.files import sha256_file, tree_size, write_atomic
from hpcstack.lifetime import die_with_parent

DISK_CHECK_S = 3.0
PUMP_CHUNK = 1 << 16


class Limits(BaseModel):
    """Enforced while the build runs (None: no limit)."""

    log_bytes: int | None = None  # the log is cut here, with a marker saying so
    disk_bytes: int | None = None  # work tree plus cache growth; the build is killed past it


class BuildRequest(BaseModel):
    """Everything one build needs, decided and checked by its submitter."""

    name: str  # the definition's file name, for messages
    definition: Definition  # parsed and checked once, by the submitter
    text: str  # the definition's text, stored in the image as it is
    output: str  # the finished SIF, or sandbox directory with ``sandbox``
    sandbox: bool = False
    run_test: bool = True
    compression: Compression = "zstd"
    cwd: str  # relative ``%files`` sources and archive ``From:`` paths start here
    workdir: str  # the job's private scratch (work trees, the output before it is moved)
    cache_dir: str
    docker_cert_dir: str | None = None
    jail: JailSpec | None = None  # None: run as the caller sees the host (admins' builds)
    log: str | None = None  # the build's output goes here (None: this process's stderr)
    limits: Limits = Limits()
    result: str


class BuildResult(BaseModel):
    output: str | None = None
    size: int = 0
    sha256: str | None = None
    seconds: float = 0.0
    error: PlanError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def write_request(request: BuildRequest, path: Path) -> Path:
    write_atomic(path, request.model_dump_json(), mode=0o600)
    return path


def read_result(path: str | Path) -> BuildResult | None:
    """The job's result (``request.result``), or None when it wrote none (killed first)."""
    try:
        return BuildResult.model_validate_json(Path(path).read_text())
    except (OSError, ValueError):
        return None


def job_argv(request_path: Path) -> list[str]:
    return [sys.executable, "-m", "hpcstack.build.job", str(request_path)]


# --- inside: the build itself ------------------------------------------------------------


def staged_output(request: BuildRequest) -> Path:
    """Where a jailed build writes its output: inside its own scratch, moved out after."""
    return Path(request.workdir) / "out" / Path(request.output).name


def build(request: BuildRequest, output: Path) -> None:
    from hpcstack.build.builder import BuildOptions, build_definition
    from hpcstack.build.cache import BuildCache

    options = BuildOptions(sandbox=request.sandbox, force=True, run_test=request.run_test,
                           compression=request.compression,
                           docker_cert_dir=request.docker_cert_dir,
                           tmpdir=request.workdir, cache=BuildCache(Path(request.cache_dir)))
    os.chdir(request.cwd)
    output.parent.mkdir(parents=True, exist_ok=True)
    Path(request.workdir).mkdir(parents=True, exist_ok=True)
    build_definition(request.name, request.definition, request.text, output, options)


def inside(request: BuildRequest) -> int:
    """PID 1 of the jail: enter it, build, report an error the user can fix."""
    from hpcstack.build import jail

    assert request.jail is not None
    error_file = Path(request.workdir) / "error.json"
    try:
        try:
            jail.enter(request.jail)
        except OSError as err:
            raise UserError(f"the build's jail could not be set up: {err}") from None
        os.environ.update(HOME="/root", TMPDIR=request.workdir,
                          XDG_RUNTIME_DIR=request.workdir)
        build(request, staged_output(request))
    except UserError as err:
        error_file.write_text(PlanError.of(err).model_dump_json())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


# --- outside: start, watch, publish ------------------------------------------------------


class Watch:
    """The running build's output into the log up to a cap; its disk use against a limit."""

    def __init__(self, request: BuildRequest, proc: subprocess.Popen, log: IO[bytes]) -> None:
        self.request, self.proc, self.log = request, proc, log
        self.over_disk: int | None = None
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        limit = self.request.limits.log_bytes
        written = 0
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(PUMP_CHUNK):  # type: ignore[attr-defined]
            if limit is not None and written + len(chunk) > limit:
                if written <= limit:
                    self.log.write(chunk[:max(0, limit - written)])
                    self.log.write(f"\n[u2cb: the log was cut at {limit} bytes (the site's "
                                   "limit); the build goes on]\n".encode())
                    self.log.flush()
                written = limit + 1
                continue
            self.log.write(chunk)
            self.log.flush()
            written += len(chunk)

    def wait(self) -> int:
        limit = self.request.limits.disk_bytes
        cache = Path(self.request.cache_dir)
        cache_before = tree_size(cache) if limit is not None else 0
        while True:
            try:
                status = self.proc.wait(timeout=DISK_CHECK_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if limit is None:
                continue
            used = tree_size(Path(self.request.workdir)) + tree_size(cache) - cache_before
            if used > limit:
                self.over_disk = used
                self.proc.kill()
        self.pump.join(timeout=10)
        return status


def publish(staged: Path, final: Path, sandbox: bool) -> None:
    """Move the build's output into place: a real file or directory, never a link."""
    try:
        st = staged.lstat()
    except FileNotFoundError:
        raise UserError(f"{final.name}: the build left no output") from None
    if stat.S_ISLNK(st.st_mode) or (stat.S_ISDIR(st.st_mode) != sandbox) or \
            not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UserError(f"{final.name}: the build left no {'sandbox' if sandbox else 'image'}")
    if sandbox and os.path.lexists(final):
        from hpcstack.build.fakeroot import remove_tree

        old = final.with_name(f".{final.name}.old")
        os.rename(final, old)
        os.rename(staged, final)
        remove_tree(old)
    else:
        os.replace(staged, final)


def run_jailed(request: BuildRequest, request_path: Path) -> BuildResult:
    from hpcstack.build import jail

    assert request.jail is not None
    staged = staged_output(request)
    error_file = Path(request.workdir) / "error.json"
    for path in [request.workdir, request.jail.scratch,
                 *(b.path for b in request.jail.binds if b.writable)]:
        if path:
            Path(path).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(request.log, "ab")) if request.log else sys.stderr.buffer
        proc = jail.start("hpcstack.build.job", [str(request_path), "--inside"], request.jail,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        watch = Watch(request, proc, log)
        try:
            status = watch.wait()
        except BaseException:
            proc.kill()  # unshare's --kill-child takes the whole jail with it
            proc.wait()
            raise
    if watch.over_disk is not None:
        raise UserError(f"disk quota exceeded during the build: {watch.over_disk} bytes "
                        f"used, {request.limits.disk_bytes} allowed; the build was killed")
    if error_file.is_file():
        raise PlanError.model_validate_json(error_file.read_text()).exception()
    if status != 0:
        raise UserError(f"the build ended with exit status {status}")
    publish(staged, Path(request.output), request.sandbox)
    return BuildResult(output=request.output)


def run(request: BuildRequest, request_path: Path) -> BuildResult:
    """Run the build; the result with the output's size and sha256, or the error."""
    started = time.monotonic()
    try:
        if request.jail is not None:
            result = run_jailed(request, request_path)
        else:
            build(request, Path(request.output))
            result = BuildResult(output=request.output)
    except UserError as err:
        return BuildResult(error=PlanError.of(err), seconds=time.monotonic() - started)
    output = Path(request.output)
    if output.is_file():
        result.size, result.sha256 = output.stat().st_size, sha256_file(output)
    else:
        result.size = tree_size(output)
    result.seconds = time.monotonic() - started
    return result


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    from hpcstack.build.jail import handshake

    argv = handshake(argv)
    request_path = Path(argv[0])
    request = BuildRequest.model_validate_json(request_path.read_text())
    if "--inside" in argv[1:]:
        return inside(request)
    signal.signal(signal.SIGTERM, _interrupt)  # cancel: the build cleans up as on Ctrl-C
    try:
        result = run(request, request_path)
    except KeyboardInterrupt:
        result = BuildResult(error=PlanError(message="the build was interrupted"))
        write_atomic(Path(request.result), result.model_dump_json())
        return 130
    write_atomic(Path(request.result), result.model_dump_json())
    if result.error is not None:
        print(f"hpcstack: error: {result.error.exception()}", file=sys.stderr)
        return 1
    print(f"INFO:    Built {Path(request.output).name} ({result.size / 2**20:.1f} MiB) in "
          f"{result.seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
