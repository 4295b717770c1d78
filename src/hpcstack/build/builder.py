"""``hpcstack build``: a definition file (or an image URI) to a SIF or a sandbox.

As an ordinary user: the bootstrap comes from the cache or is fetched
(:mod:`~hpcstack.build.agents`); every section then runs as fake root in a
private user, mount and PID namespace (:mod:`~hpcstack.build.inside`); the
SIF is assembled next to the output under a temporary name and renamed into
place.  On any failure or Ctrl-C the namespace is killed (its mounts and
processes go with it), the work directory is removed, and no output appears.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hpcstack.build import agents, engines, fakeroot, layout, pack
from hpcstack.build.cache import BuildCache
from hpcstack.build.plan import HostCopy, Plan, PlanError
from hpcstack.deffile import Definition, Stage, check, parse
from hpcstack.deffile.parser import stored_text
from hpcstack.errors import UserError
from hpcstack.files import tree_size
from hpcstack.lifetime import die_with_parent

URI_AGENTS = {"docker": "docker", "docker-archive": "docker-archive", "oci": "oci",
              "oci-archive": "oci-archive"}
UNSUPPORTED_URIS = ("library", "oras", "shub", "http", "https")


@dataclass
class BuildOptions:
    sandbox: bool = False
    force: bool = False
    run_test: bool = True
    compression: str = "zstd"
    engine: str = "auto"
    docker_cert_dir: str | None = None
    docker_insecure: bool = False
    quiet: bool = False
    tmpdir: str | None = None
    cache: BuildCache = field(default_factory=BuildCache)


@dataclass(frozen=True)
class BuildResult:
    output: Path
    size: int
    seconds: float


def definition_text(spec: str) -> tuple[str, str]:
    """(name for messages, definition text) for a build spec: a file or an image URI.

    As with ``apptainer build``: ``docker://ubuntu:22.04`` or a SIF or sandbox
    path stand for a one-stage definition bootstrapping from it.
    """
    scheme, sep, rest = spec.partition("://")
    if sep and scheme in UNSUPPORTED_URIS:
        raise UserError(f"{spec}: {scheme}:// images are not supported here; "
                        "use docker://, a local SIF or a definition file")
    if sep and scheme in URI_AGENTS:
        return spec, f"Bootstrap: {URI_AGENTS[scheme]}\nFrom: {rest}\n"
    path = Path(spec)
    if path.is_dir() or (path.is_file() and _is_image(path)):
        return spec, f"Bootstrap: localimage\nFrom: {path.resolve()}\n"
    if not path.is_file():
        raise UserError(f"{spec}: no such definition file")
    try:
        return spec, path.read_text()
    except (UnicodeDecodeError, OSError) as err:
        raise UserError(f"{spec}: cannot read definition file: {err}") from None


def _is_image(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(48)
    return head[:4] == b"hsqs" or head[32:41] == b"SIF_MAGIC"


def load_definition(name: str, text: str) -> Definition:
    problems = check(text, name)
    if problems:
        raise UserError("\n".join(str(p) for p in problems))
    return parse(text, name)


def host_copies(name: str, stage: Stage) -> list[HostCopy]:
    """``%files`` lines from the host, globbed and checked before any work starts."""
    out = []
    for section in stage.files:
        if section.stage is not None:
            continue
        for t in section.transfers:
            matches = sorted(glob.glob(os.path.expanduser(t.src)))
            if not matches:
                raise UserError(f"{name}:{t.line}: %files: {t.src}: no such file or directory")
            out.append(HostCopy(sources=[os.path.abspath(m) for m in matches], dst=t.dst,
                                line=t.line))
    return out


def check_output(output: Path, force: bool) -> None:
    if os.path.lexists(output) and not force:
        raise UserError(f"{output}: already exists; use --force to overwrite it")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{parent}: no such directory for the output")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{parent}: not writable")


class Children:
    """Child processes that must not outlive the build, whatever ends it."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.current: subprocess.Popen | None = None
        self.stop_signal = signal.SIGTERM

    def run(self, argv: Sequence[str], *, what: str | None = None,
            env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM) -> None:
        """Run ``argv``; if the build ends first, stop it with ``stop_signal``.

        ``unshare`` ignores SIGTERM while it waits: the build namespace is ended
        with SIGKILL, and ``--kill-child`` takes everything inside with it.
        """
        out = subprocess.DEVNULL if self.quiet else None
        self.stop_signal = stop_signal
        self.current = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                        env={**os.environ, **env} if env else None,
                                        preexec_fn=lambda: die_with_parent(stop_signal))
        try:
            status = self.current.wait()
        finally:
            self.stop()
        if status != 0:
            raise UserError(f"{what or argv[0]} failed with exit status {status}")

    def stop(self) -> None:
        proc, self.current = self.current, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


WORKDIR_PREFIX = "hpcstack-build-"
WORKDIR_LOCK = ".lock"
FRESH_S = 10.0  # younger work directories may not hold their lock yet


def workdir_base(options: BuildOptions | None = None) -> Path:
    return Path((options and options.tmpdir) or os.environ.get("HPCSTACK_TMPDIR")
                or tempfile.gettempdir())


@contextlib.contextmanager
def workdir(options: BuildOptions) -> Iterator[Path]:
    """A fresh work directory, locked while the build runs and removed after it."""
    path = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=workdir_base(options)))
    lock = os.open(path / WORKDIR_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
    finally:
        fakeroot.remove_tree(path)
        os.close(lock)


def prune_workdirs(base: Path | None = None) -> list[Path]:
    """Remove the work directories of builds that were killed (no one holds their lock).

    Their files may be owned by subordinate IDs, which only a namespace can remove.
    """
    removed = []
    base = base or workdir_base()
    for path in sorted(base.glob(WORKDIR_PREFIX + "*")):
        if not path.is_dir() or path.stat().st_mtime > time.time() - FRESH_S:
            continue
        try:
            lock = os.open(path / WORKDIR_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a build is running in it
        finally:
            os.close(lock)
        fakeroot.remove_tree(path)
        removed.append(path)
    return removed


def run_inside(plan: Plan, children: Children) -> None:
    plan_path = Path(plan.workdir) / "plan.json"
    plan_path.write_text(plan.model_dump_json())
    argv = fakeroot.namespace_argv([sys.executable, "-m", "hpcstack.build.inside",
                                    str(plan_path)])
    try:
        children.run(argv, what="build", stop_signal=signal.SIGKILL)
    except UserError:
        error = Path(plan.error_file)
        if error.is_file():
            raise PlanError.model_validate_json(error.read_text()).exception() from None
        raise


def publish_sandbox(rootfs: Path, output: Path) -> None:
    """Move the finished root filesystem to ``output`` (replacing an old one)."""
    staged = output.parent / f".{output.name}.hpcstack-new"
    fakeroot.remove_tree(staged)
    try:
        rootfs.rename(staged)
    except OSError:  # another filesystem: copy inside a namespace to keep ownership
        subprocess.run(fakeroot.namespace_argv(["cp", "-a", str(rootfs), str(staged)]),
                       check=True, stdin=subprocess.DEVNULL)
    old = output.parent / f".{output.name}.hpcstack-old"
    if os.path.lexists(output):
        os.rename(output, old)
    os.rename(staged, output)
    fakeroot.remove_tree(old)


def publish_sif(plan: Plan, defn: Definition, output: Path, children: Children) -> None:
    work = Path(plan.workdir)
    deffile = work / "Singularity"
    deffile.write_text(plan.text)
    partial = output.parent / f".{output.name}.hpcstack-partial"
    try:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        pack.assemble(partial, deffile, Path(plan.metadata_file), Path(plan.squashfs), plan.arch,
                      lambda argv: children.run(argv, what="siftool"))
        if output.is_dir() and not output.is_symlink():
            fakeroot.remove_tree(output)
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def build(spec: str, output: Path, options: BuildOptions) -> BuildResult:
    """Build ``spec`` into ``output``; raises :class:`UserError` for anything the user can fix."""
    started = time.monotonic()
    name, text = definition_text(spec)
    defn = load_definition(name, text)
    check_output(output, options.force)
    engine = engines.choose(options.engine)
    if engine == "apptainer":
        engines.apptainer_build(spec, output, options)
        return BuildResult(output, output.stat().st_size, time.monotonic() - started)
    return build_definition(name, defn, text, output, options, started=started)


def build_definition(name: str, defn: Definition, text: str, output: Path,
                     options: BuildOptions, *, started: float | None = None) -> BuildResult:
    """Build an already parsed and checked definition (``text`` goes into the image as
    Apptainer stores it: from the first ``Bootstrap:`` line when only comments precede it).

    The one path every build takes: ``hpcstack build`` after parsing, and the
    build job (:mod:`hpcstack.build.job`) with the model the service checked.
    """
    started = time.monotonic() if started is None else started
    fakeroot.check_subids()
    children = Children(options.quiet)
    ctx = agents.Context(deffile=name, cache=options.cache,
                         docker_cert_dir=options.docker_cert_dir,
                         docker_insecure=options.docker_insecure, quiet=options.quiet,
                         run=children.run)
    try:
        host_files = [host_copies(name, stage) for stage in defn.stages]
        with workdir(options) as work:
            sources = [agents.resolve(stage, ctx) for stage in defn.stages]
            plan = Plan(deffile=name, definition=defn, text=stored_text(text),
                        workdir=str(work),
                        sources=sources, host_files=host_files, run_test=options.run_test,
                        force=options.force,
                        sandbox=options.sandbox, compression=options.compression,
                        arch=pack.host_arch(),
                        build_date=layout.build_date(datetime.now(UTC)))
            run_inside(plan, children)
            if options.sandbox:
                publish_sandbox(Path(plan.rootfs(len(defn.stages) - 1)), output)
            else:
                publish_sif(plan, defn, output, children)
    finally:
        children.stop()
    size = output.stat().st_size if output.is_file() else tree_size(output)
    return BuildResult(output, size, time.monotonic() - started)
