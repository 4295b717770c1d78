"""The deploy lifecycle (I/O): deploy, list, remove, check.

``deploy`` makes the tree under the site root match the site file:

    ROOT/lmod/NAME/VERSION.lua  ROOT/lmod/NAME/.modulerc.lua   Lmod (MODULEPATH=ROOT/lmod)
    ROOT/tcl/NAME/VERSION       ROOT/tcl/NAME/.version          Environment Modules
    ROOT/bin/NAME/VERSION/CMD   wrappers, outside MODULEPATH
    ROOT/images/SHA             the image as the runtime runs it (shared by checksum)
    ROOT/state.json             what is deployed, with checksums (for list/check/remove)

Everything is checked before anything is written (a missing image writes
nothing); every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.files import sha256_file, write_atomic
from hpcstack.modules import render
from hpcstack.modules.config import HELLO_COMMAND, App, Site
from hpcstack.modules.image import inspect, tree_digest
from hpcstack.modules.render import ImageFacts, Layout, Module
from hpcstack.runtime.sif import is_sif

log = logging.getLogger("hpcstack.modules")

LMOD_DIRS = ("/usr/share/lmod/lmod", "/opt/apps/lmod/lmod", "/usr/local/lmod/lmod")
STATE_VERSION = 1


@dataclass
class Deployed:
    """One deployed module, as recorded in ``state.json``."""

    name: str
    version: str
    source: str
    source_sha256: str
    image: str
    image_sha256: str
    commands: list[str]
    files: list[str]
    default: bool = False
    deployed_at: float = field(default_factory=time.time)

    @property
    def module(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass
class Report:
    deployed: list[Deployed] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# --- files ------------------------------------------------------------------------------


def read_state(layout: Layout) -> dict[str, Deployed]:
    path = Path(layout.state)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {d["name"] + "/" + d["version"]: Deployed(**d) for d in data["modules"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable deploy state ({exc})") from None


def write_state(layout: Layout, state: dict[str, Deployed]) -> None:
    data = {"version": STATE_VERSION, "modules": [asdict(d) for _, d in sorted(state.items())]}
    write_atomic(Path(layout.state), json.dumps(data, indent=1) + "\n")


def _remove_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    parent = path.parent
    while parent.name and parent != parent.parent:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent


# --- runtime ----------------------------------------------------------------------------


def runtime_path(site: Site) -> str:
    if site.runtime_path:
        return site.runtime_path
    binary = {"charliecloud": "ch-run"}.get(site.runtime, site.runtime)
    found = shutil.which(binary)
    if found is None:
        raise UserError(f"runtime: {binary} not found on PATH (set runtime_path in the site file)")
    return found


def _host_commands() -> set[str]:
    names: set[str] = set()
    for d in ("/usr/bin", "/bin"):
        with contextlib.suppress(OSError):
            names.update(os.listdir(d))
    return names


def _prepare_image(facts: ImageFacts, target: Path, site: Site, points: set[str]) -> str:
    """Put the image where the runtime runs it; the deployed copy's checksum."""
    from hpcstack.runtime.base import Mountpoint
    from hpcstack.runtime.cache import extract, locate, make_mountpoints

    if site.runtime != "charliecloud":
        if not target.exists():
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(facts.source, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        return facts.sha256
    fresh = not target.exists()
    extract(locate(Path(facts.source)), target)
    marker = target.parent / f".{target.name}.sha256"
    if fresh or points or not marker.exists():
        make_mountpoints(target, [Mountpoint(p) for p in sorted(points)])
        write_atomic(marker, tree_digest(target) + "\n")
    return marker.read_text().strip()


# --- deploy -----------------------------------------------------------------------------


def signature_problems(site: Site, images: dict[str, str]) -> dict[str, str]:
    """``require_signature``: module -> why its image is not a SIF signed, unchanged, by
    one of ``trusted_keys`` (``images``: module -> image; each image is checked once)."""
    from hpcstack.signing import verify_image
    from hpcstack.signing.pgp import load_keyring

    keyring = load_keyring(Path(k) for k in site.trusted_keys)
    why: dict[str, str | None] = {}
    for image in set(images.values()):
        why[image] = None
        if not os.path.exists(image):
            why[image] = f"image {image} not found: its signature cannot be checked"
        elif not is_sif(image):
            why[image] = f"image {image} is not a SIF image, and require_signature is set"
        else:
            try:
                verify_image(Path(image), keyring)
            except UserError as err:
                why[image] = str(err)
    return {module: why[image] for module, image in sorted(images.items()) if why[image]}


def check_signatures(site: Site, apps: list[App]) -> None:
    """Deploy refuses the first app whose image fails :func:`signature_problems`."""
    problems = signature_problems(site, {a.module: a.image for a in apps})
    for app in apps:
        if app.module in problems:
            raise UserError(f"{app.module}: {problems[app.module]}; nothing was deployed")


def deploy(site: Site, only: list[str] | None = None,
           warn: Callable[[str], None] | None = None) -> Report:
    """Deploy every enabled app (or those named in ``only``); see the module docstring."""
    started = time.perf_counter()
    report = Report()
    say = warn or (lambda msg: log.warning("%s", msg))
    layout = Layout.of(site)
    selected = [a for a in site.apps if not only or a.name in only or a.module in only]
    if only:
        unknown = [n for n in only if not any(n in (a.name, a.module) for a in site.apps)]
        if unknown:
            raise UserError(f"--only {unknown[0]}: no such app in the site file")
    wanted = [a for a in selected if a.state != "disabled"]

    # 1. Everything that can fail on the inputs, before anything is written.
    for app in wanted:
        if not Path(app.image).exists():
            raise UserError(f"{app.module}: image {app.image} not found; nothing was deployed")
    if site.require_signature:
        check_signatures(site, wanted)
    rt_path = runtime_path(site) if wanted else ""
    facts: dict[str, ImageFacts] = {}
    sums: dict[tuple[str, int, int], str] = {}
    for app in wanted:
        if app.image in facts:
            continue
        st = os.stat(app.image)
        key = (app.image, st.st_size, st.st_mtime_ns)
        listing = app.commands == "discover"
        sums.setdefault(key, sha256_file(Path(app.image)))
        facts[app.image] = inspect(Path(app.image), listing=listing, checksum=sums[key])
        if listing and not facts[app.image].executables:  # labelled images need no listing
            facts[app.image] = inspect(Path(app.image), listing=True, checksum=sums[key])
    host = _host_commands()
    plans: list[tuple[App, Module, ImageFacts]] = []
    for app in wanted:
        f = facts[app.image]
        commands = render.discover(app, site, f)
        if not commands:
            raise UserError(f"{app.module}: no commands found in {app.image} (name them: "
                            "`commands:` or `discover:` globs in a site file, "
                            "`--commands` for u2cb module)")
        for cmd in render.shadowed(commands, site, host):
            report.warnings.append(f"{app.module}: command {cmd!r} shadows the host's {cmd} "
                                   "while the module is loaded")
        report.warnings += render.runtime_notes(app, site)
        plans.append((app, render.module_for(app, site, f, commands), f))
    for msg in report.warnings:
        say(msg)

    # 2. Images, then modulefiles and wrappers, then the state.
    state = read_state(layout)
    points: dict[str, set[str]] = {}
    for app, m, _f in plans:
        points.setdefault(m.image, set()).update(render.mountpoints(app, site))
    image_sums = {}
    for _app, m, f in plans:
        if m.image not in image_sums:
            image_sums[m.image] = _prepare_image(f, Path(m.image), site, points[m.image])
    for app in selected:
        if app.state == "disabled" and app.module in state:
            _remove(layout, state.pop(app.module))
            report.removed.append(app.module)
    if not only:  # the site file is the whole truth: drop what it no longer lists
        listed = {a.module for a in site.apps}
        for gone in [k for k in state if k not in listed]:
            _remove(layout, state.pop(gone))
            report.removed.append(gone)
    for app, m, f in plans:
        files = _write_module(site, layout, app, m, f, rt_path)
        old = state.get(app.module)
        if old:
            for stale in set(old.files) - set(files):
                _remove_file(Path(stale))
        state[app.module] = Deployed(
            name=app.name, version=app.version, source=app.image, source_sha256=f.sha256,
            image=m.image, image_sha256=image_sums[m.image], commands=list(m.commands),
            files=files, default=app.state == "default",
        )
        report.deployed.append(state[app.module])
    _write_defaults(site, layout, state)
    _collect_images(layout, state)
    write_state(layout, state)
    if site.usage_log:
        _usage_log(Path(site.usage_log), report, say)
    if site.spider_cache and site.module_system != "tcl":
        spider_cache(layout)
    report.seconds = time.perf_counter() - started
    return report


def _usage_log(path: Path, report: Report, say: Callable[[str], None]) -> None:
    """The usage log, made if missing: every user may append (mode 0622), only its owner
    may read it (who ran what is the site's business, not the other users')."""
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o622)
        os.fchmod(fd, 0o622)
        os.close(fd)
    except OSError as err:
        msg = f"usage_log {path}: cannot create it ({err.strerror}); no records until it exists"
        report.warnings.append(msg)
        say(msg)


def _write_module(site: Site, layout: Layout, app: App, m: Module, f: ImageFacts,
                  rt_path: str) -> list[str]:
    files: list[str] = []
    for cmd in m.commands:
        path = Path(m.bin_dir) / cmd
        write_atomic(path, render.wrapper(m, app, site, cmd, rt_path, f.has_exec_action), 0o755)
        files.append(str(path))
    if app.mpi != "none" and HELLO_COMMAND not in m.commands:
        # The image's MPI hello, for `modules check --mpi` (and users testing a launcher).
        path = Path(m.bin_dir) / HELLO_COMMAND
        write_atomic(path, render.wrapper(m, app, site, app.mpi_hello, rt_path,
                                          f.has_exec_action), 0o755)
        files.append(str(path))
    if site.module_system in ("lmod", "both"):
        path = Path(layout.lua(app))
        write_atomic(path, render.lua_modulefile(m))
        files.append(str(path))
    if site.module_system in ("tcl", "both"):
        path = Path(layout.tcl_file(app))
        write_atomic(path, render.tcl_modulefile(m))
        files.append(str(path))
    return files


def _write_defaults(site: Site, layout: Layout, state: dict[str, Deployed]) -> None:
    names = {d.name for d in state.values()}
    for tree in (layout.lmod, layout.tcl):
        base = Path(tree)
        if base.is_dir():
            names |= {p.name for p in base.iterdir() if p.is_dir()}
    for name in names:
        default = next((d for d in state.values() if d.name == name and d.default), None)
        lua = Path(layout.lmod) / name / ".modulerc.lua"
        tcl = Path(layout.tcl) / name / ".version"
        if default and site.module_system in ("lmod", "both"):
            write_atomic(lua, render.lua_default(name, default.version))
        elif lua.exists():
            _remove_file(lua)
        if default and site.module_system in ("tcl", "both"):
            write_atomic(tcl, render.tcl_default(name, default.version))
        elif tcl.exists():
            _remove_file(tcl)


def _remove(layout: Layout, d: Deployed) -> None:
    for path in d.files:
        _remove_file(Path(path))


def _collect_images(layout: Layout, state: dict[str, Deployed]) -> None:
    """Delete deployed images no module uses any more."""
    from hpcstack.runtime.cache import remove_tree

    images = Path(layout.root) / "images"
    if not images.is_dir():
        return
    used = {Path(d.image).name for d in state.values()}
    for entry in images.iterdir():
        if entry.name.startswith("."):  # .NAME.sha256, .NAME.lock
            if entry.is_file() and entry.name[1:].rsplit(".", 1)[0] not in used:
                entry.unlink()
            continue
        if entry.name not in used:
            remove_tree(entry) if entry.is_dir() else entry.unlink()


def remove(site: Site, names: list[str]) -> list[str]:
    """Remove deployed modules (``NAME`` or ``NAME/VERSION``); the removed modules."""
    layout = Layout.of(site)
    state = read_state(layout)
    gone = [k for k, d in state.items() if d.name in names or k in names]
    missing = [n for n in names if not any(n in (d.name, d.module) for d in state.values())]
    if missing:
        raise UserError(f"{missing[0]}: not deployed")
    for key in gone:
        _remove(layout, state.pop(key))
    _write_defaults(site, layout, state)
    _collect_images(layout, state)
    write_state(layout, state)
    if site.spider_cache and site.module_system != "tcl":
        spider_cache(layout)
    return gone


def listing(site: Site) -> list[dict[str, object]]:
    """Every app of the site file with what is deployed for it."""
    state = read_state(Layout.of(site))
    rows: list[dict[str, object]] = []
    for app in site.apps:
        d = state.get(app.module)
        rows.append({"module": app.module, "state": app.state, "deployed": d is not None,
                     "commands": d.commands if d else [], "image": app.image,
                     "default": bool(d and d.default)})
    for key, d in sorted(state.items()):
        if not any(a.module == key for a in site.apps):
            rows.append({"module": key, "state": "not in site file", "deployed": True,
                         "commands": d.commands, "image": d.source, "default": d.default})
    return rows


# --- module systems ---------------------------------------------------------------------


def lmod_dir() -> Path | None:
    env = os.environ.get("LMOD_DIR")
    candidates = [Path(env).parent] if env else []
    candidates += [Path(p) for p in LMOD_DIRS]
    return next((c for c in candidates if (c / "libexec" / "lmod").exists()), None)


def spider_cache(layout: Layout) -> None:
    """Build Lmod's system spider cache for ROOT/lmod and the lmodrc.lua that points at it.

    ``update_lmod_system_cache_files`` writes ``spiderT.lua`` and, with ``luac5.3``
    present (Debian's lmod depends on lua5.3), ``spiderT.luac_5.3``, which Lmod reads
    first. Even so, a cached ``module load`` in Lmod 8.6 costs about 15 us per module of
    the tree (docs/modules.md, "Large trees").
    """
    lmod = lmod_dir()
    if lmod is None:
        raise UserError("spider_cache: Lmod not found (looked in " + ", ".join(LMOD_DIRS) + ")")
    cache = Path(layout.cache)
    cache.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(layout.lmodrc), render.lmodrc(layout))
    tmp = Path(tempfile.mkdtemp(prefix=".spider.", dir=cache))
    try:
        env = dict(os.environ, MODULEPATH=layout.lmod, LMOD_RC=layout.lmodrc)
        proc = subprocess.run(
            [str(lmod / "libexec" / "update_lmod_system_cache_files"), "-d", str(tmp),
             "-t", str(tmp / "timestamp"), layout.lmod],
            capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise UserError(f"spider cache: update_lmod_system_cache_files failed: "
                            f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        for entry in tmp.iterdir():
            if entry.name != "timestamp":
                os.replace(entry, cache / entry.name)
        os.replace(tmp / "timestamp", cache / "timestamp")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tcl_modulecmd() -> list[str] | None:
    cmd = os.environ.get("HPCSTACK_MODULECMD_TCL")
    if cmd:
        return cmd.split()
    for path in ("/usr/lib/x86_64-linux-gnu/modulecmd.tcl",
                 "/usr/share/modules/libexec/modulecmd.tcl"):
        if os.path.exists(path):
            return ["tclsh", path]
    return None


def load_error(system: str, modulepath: str, module: str) -> str | None:
    """Load ``module`` with the real module command; its error, or None when it loads."""
    if system == "lmod":
        lmod = lmod_dir()
        if lmod is None:
            return "Lmod not found"
        argv = [str(lmod / "libexec" / "lmod"), "bash", "load", module]
    else:
        tcl = tcl_modulecmd()
        if tcl is None:
            return "Environment Modules' modulecmd.tcl not found (set HPCSTACK_MODULECMD_TCL)"
        argv = [*tcl, "bash", "load", module]
    env = dict(os.environ, MODULEPATH=modulepath, LOADEDMODULES="", _LMFILES_="",
               LMOD_IGNORE_CACHE="1")
    for key in ("_ModuleTable_", "_ModuleTable001_", "_ModuleTable_Sz_"):
        env.pop(key, None)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    text = proc.stderr.strip()
    if proc.returncode != 0 or "error" in text.lower() or "false" in proc.stdout[-20:]:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip("-=: ")]
        return " ".join(lines[:3]) or f"exit status {proc.returncode}"
    return None


@dataclass
class Problem:
    module: str
    message: str


def check(site: Site, load: bool = True) -> list[Problem]:
    """Every modulefile loads, every wrapper and image is present, checksums match; with
    ``require_signature``, every image is still signed by a key the site trusts today
    (a key taken out of ``trusted_keys`` shows here)."""
    layout = Layout.of(site)
    state = read_state(layout)
    problems: list[Problem] = []
    for app in site.enabled():
        if app.module not in state:
            problems.append(Problem(app.module, "in the site file but not deployed"))
    digests: dict[str, str | None] = {}
    signed: dict[str, str] = {}  # module -> image, to verify against today's trusted_keys
    for key, d in sorted(state.items()):
        for path in d.files:
            if not os.path.exists(path):
                problems.append(Problem(key, f"{path} is missing"))
        image = Path(d.image)
        if not image.exists():
            problems.append(Problem(key, f"image {image} is missing"))
            continue
        if d.image not in digests:
            digests[d.image] = tree_digest(image) if image.is_dir() else sha256_file(image)
        if digests[d.image] != d.image_sha256:
            problems.append(Problem(key, f"image {image} does not match its recorded checksum"))
        elif site.require_signature:  # the SIF run, or the SIF a tree was extracted from
            signed[key] = d.image if is_sif(d.image) else d.source
        if not load:
            continue
        systems = {"lmod": ["lmod"], "tcl": ["tcl"], "both": ["lmod", "tcl"]}[site.module_system]
        # A module system that is not installed here cannot be asked (only that one).
        available = {"lmod": lmod_dir() is not None, "tcl": tcl_modulecmd() is not None}
        if site.module_system != "both":
            available = {k: True for k in available}
        for system in (s for s in systems if available[s]):
            tree = layout.lmod if system == "lmod" else layout.tcl
            err = load_error(system, tree, key)
            if err:
                problems.append(Problem(key, f"{system}: module load fails: {err}"))
    problems += [Problem(m, why) for m, why in signature_problems(site, signed).items()]
    return problems
