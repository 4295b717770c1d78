"""Charliecloud (``ch-run`` 0.31): run Apptainer-layout images without Apptainer.

How a launch maps onto ``ch-run``, and where it differs from Apptainer:

Image
    A SIF's primary SquashFS partition (or a bare SquashFS file) is extracted
    once per user to ``${XDG_CACHE_HOME:-~/.cache}/hpcstack/images/`` (see
    :mod:`hpcstack.runtime.cache`); a directory (sandbox) is run as it is.
    ``ch-run X.sqfs`` would mount through FUSE instead, but needs a
    world-usable ``/dev/fuse``.  The image is read-only, as under Apptainer.

Binds
    ``ch-run`` always binds ``/dev``, ``/proc``, ``/sys``, ``/tmp`` (host
    ``$TMPDIR`` if set, so hpcstack unsets it for ``ch-run`` to get the host's
    ``/tmp`` as Apptainer does), ``/etc/hosts``, ``/etc/resolv.conf`` and
    ``/etc/machine-id`` when in the image, and generated ``/etc/passwd`` and
    ``/etc/group`` (home ``/``, where Apptainer writes the real home).
    Apptainer also binds ``$HOME`` and the working directory at their own paths
    and ``/var/tmp``; hpcstack adds ``-b $HOME:$HOME``, ``-b CWD:CWD`` (unless
    already visible) and ``-b /var/tmp`` so relative and host paths work the same.
    ``ch-run --home`` would put ``$HOME`` at ``/home/$USER`` over a tmpfs; it
    is used only when the home's own path cannot be made in the image.
    ``ch-run -b`` needs the destination to exist in the image.  In an extracted
    copy hpcstack owns, it creates missing mount points (Apptainer's underlay
    does the same); in a sandbox it does not own, a missing destination is an
    error for ``--bind`` and a warning for home/working directory.
    ``ch-run`` has no read-only binds: ``SRC:DST:ro`` is bound read-write, with
    a warning.  ``/etc/localtime`` is not bound (the image's own is used).

Working directory
    ``ch-run`` starts in ``/`` unless given ``-c``; hpcstack passes the
    caller's directory.  Apptainer binds the working directory only when its
    path exists in the image; here it is also bound when hpcstack can create
    the path, but not over a non-empty image directory (as ``/usr`` would be).

Environment
    ``ch-run`` passes the host environment through and unsets ``TMPDIR``.
    Like Apptainer, hpcstack drops host ``LD_LIBRARY_PATH`` and the
    ``APPTAINER_*``/``SINGULARITY_*`` variables, sets ``PATH`` to Apptainer's
    default, sets ``APPTAINER_CONTAINER``/``APPTAINER_NAME`` (and the
    ``SINGULARITY_`` pair), and takes ``--env`` values plus the host's
    ``APPTAINERENV_*``/``SINGULARITYENV_*`` as overrides (``ch-run
    --set-env``, unexpanded).  The image's ``/.singularity.d/env/*.sh`` run
    after those, so for ``exec`` hpcstack re-applies the overrides after them
    with ``env`` (Apptainer's order: ``--env`` beats ``%environment``); for
    ``run``, ``shell`` and ``test`` a variable the image itself sets keeps the
    image's value.

Actions
    Run through the image's ``/.singularity.d/actions/{exec,run,shell,test}``
    as Apptainer does; without them (a plain directory) hpcstack falls back as
    those scripts would: the command itself, ``/.singularity.d/runscript`` or
    ``/bin/sh``, ``/bin/bash`` or ``/bin/sh`` (named in ``SHELL``),
    ``/.singularity.d/test`` or ``true``.

GPUs
    ``ch-run`` has no ``--nv``/``--rocm``.  ``/dev`` is shared, so devices are
    visible, but NVIDIA's driver libraries must be injected into an image
    directory with ``ch-fromhost --nvidia DIR`` first; hpcstack does not do
    that and warns.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hpcstack.errors import UserError
from hpcstack.runtime.base import Launch, Mountpoint, Plan, Runtime
from hpcstack.runtime.cache import cache_dir, locate, make_mountpoints, prepare_copy

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
META = PurePosixPath("/.singularity.d")
#: Guest paths ch-run binds at the same host path by itself (with TMPDIR unset).
CH_RUN_BINDS = ("/dev", "/proc", "/sys", "/tmp")
UNSET = ("LD_LIBRARY_PATH", "APPTAINER_*", "SINGULARITY_*", "APPTAINERENV_*", "SINGULARITYENV_*")
GPU_NOTES = {
    "nvidia": "charliecloud: --gpu nvidia not applied: ch-run has no --nv; inject the "
    "host's driver libraries into an image directory with 'ch-fromhost --nvidia DIR'",
    "amd": "charliecloud: --gpu amd not applied: ch-run has no --rocm; /dev is shared, "
    "but ROCm libraries must already be in the image",
}

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on every launch
if TYPE_CHECKING:  # typing is not imported on the launch path
    from typing import Literal

    State = Literal["present", "creatable", "blocked"]
#: Without action scripts, ``shell`` still names the shell in SHELL (as Apptainer's does).
SHELL_EXPORT = ("/bin/sh", "-c", 'SHELL="$0"; export SHELL; exec "$0" "$@"')


class Charliecloud(Runtime):
    """Charliecloud's ``ch-run``; the module docstring lists how it differs from Apptainer."""

    name = "charliecloud"
    binary = "ch-run"

    def root(self, image: Path) -> Path:
        """The directory ``ch-run`` runs for ``image`` (for a SIF, its cached copy)."""
        image = Path(os.path.abspath(image))
        if image.is_dir():
            return image
        return cache_dir(self.environ) / locate(image).key

    def prepare(self, image: Path) -> Path:
        """Extract a SIF or SquashFS file to the cache once; a directory is used as is."""
        image = Path(os.path.abspath(image))
        if image.is_dir():
            return image
        return prepare_copy(locate(image), cache_dir(self.environ))

    def command(self, launch: Launch) -> Plan:
        plan = super().command(launch)
        if plan.mountpoints and plan.root is not None:
            make_mountpoints(plan.root, plan.mountpoints)
        return plan

    def plan(self, launch: Launch) -> Plan:
        image = launch.image_path()
        root = self.root(image)
        layout = _Layout(root, owned=_inside(root, cache_dir(self.environ)))
        user, home = self._user()
        cwd = launch.workdir()
        argv = [self.binary]
        argv += layout.home(home, user)
        argv += layout.user_binds(launch, cwd)
        argv += layout.optional("/var/tmp", "/var/tmp")
        guest_cwd, cwd_args = layout.workdir(str(cwd), home)
        argv += [*cwd_args, "-c", guest_cwd]
        overrides = self._overrides(launch)
        # ch-run 0.38 (Debian 13) sets HOME=/root unless given --home; the home bound at its
        # own path is the user's HOME inside, as in Apptainer (and ch-run 0.31 kept it).
        guest_home = home if home is not None and layout.visible(home) else None
        argv += self._env_args(image, layout, overrides, guest_home)
        argv += [str(root), "--", *_inner(launch, root, overrides)]
        notes = list(layout.notes)
        if launch.gpu:
            notes.append(GPU_NOTES[launch.gpu])
        return Plan(
            argv=argv,
            env=self._process_env(user),
            cwd=cwd,
            root=root,
            mountpoints=layout.mountpoints,
            notes=notes,
        )

    def _user(self) -> tuple[str, str | None]:
        """The user name ``ch-run`` insists on, and the home to bind (None if missing)."""
        entry = _passwd()
        user = self.environ.get("USER") or (entry.pw_name if entry else str(os.getuid()))
        home = self.environ.get("HOME") or (entry.pw_dir if entry else "")
        home = os.path.abspath(home) if home else ""
        return user, (home if home not in ("", "/") and os.path.isdir(home) else None)

    def _process_env(self, user: str) -> dict[str, str]:
        """ch-run's own environment: USER set, TMPDIR unset so it binds the host's /tmp."""
        env = dict(self.environ)
        env.pop("TMPDIR", None)
        env["USER"] = user
        return env

    def _env_args(self, image: Path, layout: _Layout, overrides: dict[str, str],
                  home: str | None) -> list[str]:
        args = ["--env-no-expand", *(f"--unset-env={glob}" for glob in UNSET)]
        values = {
            "PATH": DEFAULT_PATH,
            **({"HOME": home} if home else {}),
            "APPTAINER_CONTAINER": str(image),
            "APPTAINER_NAME": image.name,
            "SINGULARITY_CONTAINER": str(image),
            "SINGULARITY_NAME": image.name,
        }
        tmpdir = self.environ.get("TMPDIR")
        if tmpdir and layout.visible(tmpdir):
            values["TMPDIR"] = tmpdir
        values |= overrides
        return args + [f"--set-env={key}={_set_env_value(v)}" for key, v in values.items()]

    def _overrides(self, launch: Launch) -> dict[str, str]:
        """What Apptainer would force inside: host *ENV_ variables, then ``--env``."""
        found: dict[str, str] = {}
        for prefix in ("SINGULARITYENV_", "APPTAINERENV_"):  # the latter wins, as in Apptainer
            for key, value in self.environ.items():
                if key.startswith(prefix) and key[len(prefix) :]:
                    found[key[len(prefix) :]] = value
        return found | launch.env


@dataclass
class _Layout:
    """What the container will see where: binds so far, and mount points to make."""

    root: Path
    owned: bool
    mounts: list[tuple[str, str]] = field(default_factory=lambda: [(p, p) for p in CH_RUN_BINDS])
    mountpoints: list[Mountpoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def host_path(self, guest: str) -> str | None:
        """The host path behind ``guest`` when a bind covers it (innermost bind wins)."""
        best: tuple[str, str] | None = None
        for host, dst in self.mounts:
            if _under(guest, dst) and (best is None or len(dst) >= len(best[1])):
                best = (host, dst)
        if best is None:
            return None
        return best[0] + guest[len(best[1]) :]

    def visible(self, host: str) -> bool:
        """Whether the host path ``host`` appears at the same path inside."""
        return self.host_path(host) == host

    def state(self, guest: str, directory: bool = True) -> State:
        """Whether ``guest`` can be a bind destination: exists, can be made, or neither."""
        host = self.host_path(guest)
        if host is not None:
            return "present" if os.path.exists(host) else "blocked"
        return _image_state(self.root, guest, self.owned, directory)

    def bind(self, host: str, guest: str, directory: bool = True) -> list[str]:
        if self.state(guest, directory) == "creatable":
            self.mountpoints.append(Mountpoint(guest, directory))
        self.mounts.append((host, guest))
        return ["-b", host if host == guest else f"{host}:{guest}"]

    def optional(self, host: str, guest: str) -> list[str]:
        """Bind when both sides exist already (Apptainer's system binds)."""
        if os.path.isdir(host) and self.state(guest) == "present" and not self.visible(host):
            return self.bind(host, guest)
        return []

    def home(self, home: str | None, user: str) -> list[str]:
        if home is None or self.visible(home):
            return []
        if self.state(home) != "blocked":
            return self.bind(home, home)
        if home == f"/home/{user}" and self.state("/home") == "present":
            self.mounts.append((home, home))
            return ["--home"]
        self.notes.append(f"charliecloud: home {home} is not visible in {self.root}")
        return []

    def user_binds(self, launch: Launch, cwd: Path) -> list[str]:
        args = []
        for bind in launch.bind_list():
            src = os.path.normpath(cwd / bind.src)
            if not os.path.exists(src):
                raise UserError(f"bind {bind.spec()!r}: {src} does not exist")
            directory = os.path.isdir(src)
            if self.state(bind.dst, directory) == "blocked":
                raise UserError(
                    f"bind {bind.spec()!r}: {bind.dst} does not exist in {self.root}"
                    " and hpcstack cannot create it there"
                )
            if bind.ro:
                self.notes.append(
                    f"charliecloud: ch-run cannot bind read-only; {bind.spec()} is bound read-write"
                )
            args += self.bind(src, bind.dst, directory)
        return args

    def workdir(self, cwd: str, home: str | None) -> tuple[str, list[str]]:
        """The guest directory to start in, and the bind that makes it the caller's own."""
        if cwd == "/" or self.visible(cwd):
            return cwd, []
        state = self.state(cwd)
        if state == "creatable" or (state == "present" and _empty_dir(self.root, cwd)):
            return cwd, self.bind(cwd, cwd)
        if state == "present":
            self.notes.append(
                f"charliecloud: working directory {cwd} is the image's own, not the host's"
            )
            return cwd, []
        fallback = home if home is not None and self.visible(home) else "/"
        self.notes.append(
            f"charliecloud: working directory {cwd} is not visible in the"
            f" container; starting in {fallback}"
        )
        return fallback, []


def _inner(launch: Launch, root: Path, overrides: dict[str, str]) -> list[str]:
    """The command ``ch-run`` starts: the image's action script, or its fallback."""
    action = META / "actions" / launch.action
    if _has(root, action):
        if launch.action == "exec" and overrides:
            pairs = [f"{k}={v}" for k, v in overrides.items()]
            return [str(action), "/usr/bin/env", "--", *pairs, *launch.args]
        return [str(action), *launch.args]
    fallbacks = {
        "exec": [],
        "run": [str(META / "runscript")] if _has(root, META / "runscript") else ["/bin/sh"],
        "shell": [*SHELL_EXPORT, "/bin/bash" if _has(root, PurePosixPath("/bin/bash"))
                  else "/bin/sh"],
        "test": [str(META / "test")] if _has(root, META / "test") else ["/bin/sh", "-c", "true"],
    }
    return [*fallbacks[launch.action], *launch.args]


def _has(root: Path, guest: PurePosixPath) -> bool:
    """Whether the image has ``guest``; an image not yet extracted is assumed Apptainer's."""
    if not root.exists():
        return True
    return os.path.lexists(root / guest.relative_to("/"))


def _image_state(root: Path, guest: str, owned: bool, directory: bool) -> State:
    path = root
    parts = PurePosixPath(guest).relative_to("/").parts
    for i, part in enumerate(parts):
        path = path / part
        if path.is_symlink():
            return "blocked"  # ch-run would follow it, possibly out of the image
        if not path.exists():
            return "creatable" if owned else "blocked"
        last = i == len(parts) - 1
        if not last and not path.is_dir():
            return "blocked"
        if last and path.is_dir() != directory:
            return "blocked"
    return "present"


def _empty_dir(root: Path, guest: str) -> bool:
    path = root / PurePosixPath(guest).relative_to("/")
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _inside(path: Path, directory: Path) -> bool:
    return path != directory and _under(str(path), str(directory))


def _set_env_value(value: str) -> str:
    """``value`` as ``ch-run --set-env`` reads it back (it strips one pair of '...')."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return f"'{value}'"
    return value


def _passwd() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        return None
