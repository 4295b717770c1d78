"""Pure rendering: modulefiles (Lmod Lua, Tcl), wrapper scripts, default-version files.

Everything here is computed from the site model and what deploy learned about
each image (:class:`ImageFacts`); no file is read or written, no process run.
Templates are the ``*.j2`` files in ``templates/``.

Wrappers are ``/bin/sh`` scripts that ``exec`` the runtime with a command line
fixed at deploy time.  For Charliecloud only the caller's working directory
(``-c``) and ``$USER`` (which ``ch-run`` requires) are read at run time, both
without starting a process.  ``TMPDIR`` is unset so that ``ch-run`` binds the
host's ``/tmp`` at ``/tmp``, where Slurm's and Open MPI's rendezvous files are.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import PurePosixPath

import jinja2

from hpcstack.modules.config import App, Site

META_EXEC = "/.singularity.d/actions/exec"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNSET = ("LD_LIBRARY_PATH", "APPTAINER_*", "SINGULARITY_*", "APPTAINERENV_*", "SINGULARITYENV_*")
#: Open MPI's shared-memory single-copy (CMA) hangs when every rank has its own user
#: namespace (one container per rank); copy-in/copy-out through /dev/shm works.
OPENMPI_ENV = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
#: Debian's MPICH (ch4:ucx): UCX's shared memory reaches a peer's segment through
#: /proc/PID/fd, which fails across user namespaces ("Shared memory error" in MPI_Init);
#: named POSIX segments in the host's /dev/shm work.
MPICH_ENV = {"UCX_POSIX_USE_PROC_LINK": "n"}

#: Commands a module should not take over on users' PATH.
COMMON_COMMANDS = frozenset(
    [
        "bash", "sh", "dash", "zsh", "csh", "tcsh", "ksh", "env", "ls", "cp", "mv", "rm", "ln",
        "cat", "echo", "grep", "sed", "awk", "find", "xargs", "tar", "gzip", "make", "cmake",
        "gcc", "g++", "cc", "c++", "gfortran", "ld", "python", "python3", "perl", "ruby", "java",
        "ssh", "scp", "rsync", "git", "vi", "vim", "nano", "less", "more", "top", "ps", "kill",
        "id", "sort", "head", "tail", "wc", "tee", "chmod", "chown", "mkdir", "rmdir", "touch",
        "date", "sleep", "which", "time", "nohup", "module", "ml", "srun", "sbatch", "salloc",
        "squeue", "scancel", "sinfo", "mpirun", "mpiexec", "orterun", "hydra_pmi_proxy",
        "hostname", "uname", "test", "true", "false",
    ]
)


@dataclass(frozen=True)
class ImageFacts:
    """What deploy read from one image: checksum, labels, help, its paths' listing."""

    source: str
    sha256: str
    labels: dict[str, str] = field(default_factory=dict)
    help: str | None = None
    has_exec_action: bool = True
    executables: tuple[str, ...] = ()  # absolute paths of executables (and symlinks)

    def label_commands(self) -> list[str] | None:
        for key in ("hpcstack.commands", "org.hpcstack.commands"):
            if self.labels.get(key):
                return re.split(r"[\s,]+", self.labels[key].strip())
        return None


@dataclass(frozen=True)
class Layout:
    """Where things go under the site root.

    Modulefiles go to ``ROOT/lmod`` and ``ROOT/tcl``, unless ``modulepath`` names
    one folder for both (a user's own tree, where ``module use`` takes one path:
    Lmod reads ``VERSION.lua`` there and Environment Modules the Tcl ``VERSION``).
    """

    root: str
    modulepath: str | None = None

    @classmethod
    def of(cls, site: Site) -> Layout:
        return cls(site.root, site.modulepath)

    @property
    def lmod(self) -> str:
        return self.modulepath or f"{self.root}/lmod"

    @property
    def tcl(self) -> str:
        return self.modulepath or f"{self.root}/tcl"

    @property
    def state(self) -> str:
        return f"{self.root}/state.json"

    @property
    def cache(self) -> str:
        return f"{self.root}/cache/lmod"

    @property
    def lmodrc(self) -> str:
        return f"{self.root}/lmodrc.lua"

    def bin_dir(self, app: App) -> str:
        return f"{self.root}/bin/{app.name}/{app.version}"

    def image(self, sha256: str, runtime: str) -> str:
        """Deployed images are named by checksum: versions sharing an image share a copy."""
        suffix = "" if runtime == "charliecloud" else ".sif"
        return f"{self.root}/images/{sha256[:20]}{suffix}"

    def lua(self, app: App) -> str:
        return f"{self.lmod}/{app.name}/{app.version}.lua"

    def tcl_file(self, app: App) -> str:
        return f"{self.tcl}/{app.name}/{app.version}"


@dataclass(frozen=True)
class Module:
    """Everything a modulefile and its wrappers say about one app."""

    name: str
    version: str
    source: str
    image: str
    image_is_dir: bool
    bin_dir: str
    commands: tuple[str, ...]
    description: str | None
    help_text: str
    functions: tuple[str, ...]

    @property
    def module(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def image_var(self) -> str:
        return "HPCSTACK_IMAGE_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()


def discover(app: App, site: Site, facts: ImageFacts) -> list[str]:
    """The commands to expose: listed, else the image's label, else executables by glob."""
    if app.commands != "discover":
        return list(app.commands)
    labelled = facts.label_commands()
    if labelled and app.discover is None:
        return labelled
    globs = app.discover if app.discover is not None else site.discover
    found: dict[str, None] = {}
    for path in facts.executables:
        p = PurePosixPath(path)
        if any(p.match(g) and len(p.parts) == len(PurePosixPath(g).parts) for g in globs):
            found.setdefault(p.name)
    return sorted(found)


def shadowed(commands: list[str], site: Site, host_commands: set[str]) -> list[str]:
    """Commands that would hide a common host command while the module is loaded."""
    common = COMMON_COMMANDS | set(site.shadow_commands)
    return [c for c in commands if c in common or c in host_commands]


def module_for(app: App, site: Site, facts: ImageFacts, commands: list[str]) -> Module:
    layout = Layout.of(site)
    description = app.description or facts.labels.get("Description") or facts.labels.get(
        "org.label-schema.description"
    )
    help_text = app.help or facts.help or description or f"{app.module} (container image)"
    help_text = help_text.strip("\n") + (
        f"\n\nCommands: {' '.join(commands)}\nThey run inside {app.image} with {site.runtime}."
    )
    functions = app.shell_functions if app.shell_functions is not None else site.shell_functions
    return Module(
        name=app.name,
        version=app.version,
        source=app.image,
        image=layout.image(facts.sha256, site.runtime),
        image_is_dir=site.runtime == "charliecloud",
        bin_dir=layout.bin_dir(app),
        commands=tuple(commands),
        description=description,
        help_text=help_text,
        functions=tuple(commands) if functions else (),
    )


# --- quoting -------------------------------------------------------------------------------


def lua_quote(text: str) -> str:
    """A Lua string literal for ``text`` (byte-exact)."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def tcl_quote(text: str) -> str:
    """A Tcl double-quoted word for ``text``: no substitution happens inside."""
    out = []
    for ch in str(text):
        if ch in '\\"$[]{}':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hpcstack.modules", "templates"),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters["lua"] = lua_quote
    env.filters["tcl"] = tcl_quote
    env.filters["sh"] = shlex.quote
    return env


def _render(template: str, **values: object) -> str:
    return _env().get_template(template).render(**values)


def lua_modulefile(m: Module) -> str:
    return _render("module.lua.j2", m=m)


def tcl_modulefile(m: Module) -> str:
    return _render("module.tcl.j2", m=m)


def lua_default(name: str, version: str) -> str:
    return _render("modulerc.lua.j2", name=name, version=version)


def tcl_default(name: str, version: str) -> str:
    return _render("version.tcl.j2", name=name, version=version)


def lmodrc(layout: Layout) -> str:
    return _render(
        "lmodrc.lua.j2",
        root=layout.root,
        path=layout.lmodrc,
        cache_dir=layout.cache,
        timestamp=f"{layout.cache}/timestamp",
    )


# --- wrappers ------------------------------------------------------------------------------


def container_env(app: App, site: Site) -> dict[str, str]:
    env = dict(site.env) | dict(app.env)
    if app.mpi == "openmpi":
        env = OPENMPI_ENV | env
    elif app.mpi == "mpich":
        env = MPICH_ENV | env
    return env


def binds(app: App, site: Site) -> list[tuple[str, str, bool]]:
    """(source, destination, read-only) for site and app binds, in order."""
    out = []
    for spec in [*site.binds, *app.binds]:
        parts = spec.split(":")
        dst = parts[1] if len(parts) > 1 else parts[0]
        out.append((parts[0], dst, len(parts) == 3 and parts[2] == "ro"))
    return out


def mountpoints(app: App, site: Site) -> list[str]:
    """Guest directories the deployed image needs for ``ch-run -b`` (made at deploy time)."""
    points = [site.home_root] if site.runtime == "charliecloud" else []
    return points + [dst for _, dst, _ in binds(app, site)]


def wrapper(m: Module, app: App, site: Site, command: str, runtime_path: str,
            has_exec_action: bool = True) -> str:
    """The wrapper script for one command."""
    env = container_env(app, site)
    if site.runtime == "charliecloud":
        head = [runtime_path]
        for src, dst, _ro in [(site.home_root, site.home_root, False), *binds(app, site)]:
            head += ["-b", src if src == dst else f"{src}:{dst}"]
        tail = ["--env-no-expand", *(f"--unset-env={g}" for g in UNSET)]
        values = {
            "PATH": DEFAULT_PATH,
            "APPTAINER_CONTAINER": m.source,
            "APPTAINER_NAME": PurePosixPath(m.source).name,
            "SINGULARITY_CONTAINER": m.source,
            "SINGULARITY_NAME": PurePosixPath(m.source).name,
        } | env
        tail += [f"--set-env={k}={v}" for k, v in values.items()]
        tail += [m.image, "--"]
        if has_exec_action:
            tail.append(META_EXEC)
            if env:  # the image's env/*.sh run in the action; the site's values win, as --env
                tail += ["/usr/bin/env", "--", *(f"{k}={v}" for k, v in env.items())]
        tail.append(command)
        visible = ["/tmp", site.home_root, *(dst for _, dst, _ in binds(app, site))]
        patterns = "|".join(f"{shlex.quote(v)}|{shlex.quote(v.rstrip('/'))}/*" for v in visible)
        return _render("wrapper.sh.j2", m=m, command=command, runtime=site.runtime,
                       head=shlex.join(head), tail=shlex.join(tail), visible=patterns,
                       exports=[], usage_log=site.usage_log)
    from hpcstack.runtime import Launch, select

    spec = [f"{s}:{d}:ro" if ro else (s if s == d else f"{s}:{d}") for s, d, ro in binds(app, site)]
    rt = select(site.runtime, environ={})
    plan = rt.plan(Launch("exec", m.image, [command], binds=spec, gpu=app.gpu, env=env))
    argv = [runtime_path, *plan.argv[1:]]
    exports = [f"{k}={shlex.quote(v)}" for k, v in plan.env.items()]
    return _render("wrapper.sh.j2", m=m, command=command, runtime=site.runtime,
                   head=shlex.join(argv), tail="", visible="", exports=exports,
                   usage_log=site.usage_log)


def runtime_notes(app: App, site: Site) -> list[str]:
    """Warnings about what the runtime cannot do for this app."""
    notes = []
    if site.runtime == "charliecloud":
        if app.gpu:
            notes.append(f"{app.module}: gpu {app.gpu}: ch-run has no --nv/--rocm; inject "
                         "the driver libraries into the image (ch-fromhost) first")
        if any(ro for *_, ro in binds(app, site)):
            notes.append(f"{app.module}: ch-run cannot bind read-only; ':ro' binds are "
                         "bound read-write")
    return notes
