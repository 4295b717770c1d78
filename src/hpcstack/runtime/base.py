"""What every runtime adapter shares: the launch request, the plan, running it.

A :class:`Launch` says what the user wants (action, image, arguments, binds,
GPU, environment, working directory) in runtime-neutral terms.  A
:class:`Runtime` turns it into a :class:`Plan`: the exact argv, environment and
working directory for the runtime's own command.  Planning is pure so that
command lines can be tested without the runtime installed; ``execute`` and
``run`` do the I/O (preparing the image, then ``execvpe`` or a child process).
"""

from __future__ import annotations

import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpcstack.errors import UserError

# typing, logging and subprocess are imported only where needed: `hpcstack exec` and
# every module wrapper start here, and each import is paid on every container launch.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on every launch
if TYPE_CHECKING:
    from typing import ClassVar, Literal, NoReturn

    Action = Literal["exec", "run", "shell", "test"]
    Gpu = Literal["nvidia", "amd"]

ACTIONS: tuple[str, ...] = ("exec", "run", "shell", "test")
GPUS: tuple[str, ...] = ("nvidia", "amd")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Bind:
    """One bind mount: host ``src`` at guest ``dst``, read-only when ``ro``."""

    src: str
    dst: str
    ro: bool = False

    @classmethod
    def parse(cls, spec: str) -> Bind:
        """Parse Apptainer's ``SRC[:DST[:ro|rw]]``; DST defaults to SRC."""
        parts = spec.split(":")
        if not parts[0] or len(parts) > 3 or (len(parts) > 1 and not parts[1]):
            raise UserError(f"bind {spec!r}: expected SRC[:DST[:ro|rw]]")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise UserError(f"bind {spec!r}: option must be 'ro' or 'rw', not {parts[2]!r}")
        dst = parts[1] if len(parts) > 1 else parts[0]
        if not dst.startswith("/"):
            raise UserError(f"bind {spec!r}: destination {dst!r} must be an absolute path")
        return cls(parts[0], dst, len(parts) == 3 and parts[2] == "ro")

    def spec(self) -> str:
        """Back to Apptainer's syntax, shortest form."""
        if self.ro:
            return f"{self.src}:{self.dst}:ro"
        return self.src if self.src == self.dst else f"{self.src}:{self.dst}"


@dataclass(frozen=True)
class Launch:
    """A runtime-neutral request to run an image.

    ``binds`` use Apptainer's ``SRC[:DST[:ro]]`` syntax; ``cwd`` None means the
    caller's working directory; ``env`` is set inside the container and wins over
    the image's own environment, as Apptainer's ``--env`` does.
    """

    action: Action
    image: Path
    args: list[str] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)
    gpu: Gpu | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise UserError(f"action {self.action!r}: expected one of {', '.join(ACTIONS)}")
        if self.action == "exec" and not self.args:
            raise UserError("exec: a command to run is required")
        if self.gpu is not None and self.gpu not in GPUS:
            raise UserError(f"gpu {self.gpu!r}: expected one of {', '.join(GPUS)}")
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise UserError(f"env {name!r}: not a valid environment variable name")
        object.__setattr__(self, "image", Path(self.image))
        if self.cwd is not None:
            object.__setattr__(self, "cwd", Path(self.cwd))
        self.bind_list()  # validate early: a bad spec is the caller's error, not the runtime's

    def bind_list(self) -> list[Bind]:
        return [Bind.parse(spec) for spec in self.binds]

    def workdir(self) -> Path:
        """The host working directory the command runs from (absolute)."""
        return Path(os.path.abspath(self.cwd if self.cwd is not None else Path.cwd()))

    def image_path(self) -> Path:
        """The image as an absolute path; a relative one is taken from the working directory."""
        return Path(os.path.abspath(self.workdir() / self.image))


@dataclass(frozen=True)
class Mountpoint:
    """A guest path a bind needs, to be created empty in an image copy hpcstack owns."""

    path: str
    directory: bool = True


@dataclass(frozen=True)
class Plan:
    """Exactly what to start: argv, full environment, working directory.

    ``mountpoints`` are guest paths to create empty in ``root`` (an image
    directory hpcstack owns) before starting; ``notes`` are warnings for the user.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    root: Path | None = None
    mountpoints: list[Mountpoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Runtime(ABC):
    """One container runtime: plans command lines and starts them."""

    name: ClassVar[str]
    binary: ClassVar[str]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    @abstractmethod
    def plan(self, launch: Launch) -> Plan:
        """The command for ``launch``; pure (reads files, changes nothing)."""

    def argv(self, launch: Launch) -> list[str]:
        """The command line for ``launch``; pure."""
        return self.plan(launch).argv

    def prepare(self, image: Path) -> Path:
        """The image in the form this runtime runs; the image itself by default."""
        return image

    def command(self, launch: Launch) -> Plan:
        """Prepare the image and whatever the plan needs, then return the plan."""
        self.prepare(launch.image_path())
        plan = self.plan(launch)
        try:
            is_dir = plan.cwd.is_dir()
        except PermissionError:  # a directory above it is closed to this user
            is_dir = None
        if is_dir is False:
            raise UserError(f"{plan.cwd}: working directory does not exist")
        if not is_dir or not os.access(plan.cwd, os.X_OK):
            raise UserError(f"{plan.cwd}: working directory cannot be entered (permission "
                            "denied); cd to a directory of yours first")
        if plan.notes:
            import logging

            for note in plan.notes:
                logging.getLogger("hpcstack.runtime").warning("%s", note)
        return plan

    def execute(self, launch: Launch) -> NoReturn:
        """Replace this process with the container, so wrappers leave no process behind."""
        plan = self.command(launch)
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(plan.cwd)
        try:
            os.execvpe(plan.argv[0], plan.argv, plan.env)
        except FileNotFoundError:
            raise UserError(f"{plan.argv[0]}: not found (is {self.name} installed?)") from None
        except OSError as err:
            raise UserError(f"{plan.argv[0]}: cannot start ({err.strerror})") from None

    def run(self, launch: Launch) -> int:
        """Run the container as a child; its exit status (128+N when killed by signal N)."""
        import subprocess

        plan = self.command(launch)
        try:
            proc = subprocess.run(plan.argv, env=plan.env, cwd=plan.cwd, check=False)
        except FileNotFoundError:
            raise UserError(f"{plan.argv[0]}: not found (is {self.name} installed?)") from None
        if proc.returncode < 0:
            return 128 - proc.returncode
        return proc.returncode
