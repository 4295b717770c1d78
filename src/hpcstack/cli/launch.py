"""``hpcstack exec|run|shell``: options up to the image, then the command, untouched.

These verbs put a user's command line inside a container, so their parsing
follows Apptainer's, not a general option parser's: options come first and
parsing stops at the first word that is not an option (the image); everything
after it belongs to the command, ``-h``, ``-B`` and ``--`` included.  A ``--``
before the image ends the options, as in Apptainer.  Short options may be
clustered (``-hB/tmp``) and take their value attached or as the next word.

The parser is pure (:func:`parse`); :func:`main` runs the result.  This module
imports neither Typer nor Rich: portals' job scripts and users' wrappers start
these verbs all the time, and each call pays the import cost.

Example::

    >>> parse("exec", ["-B", "/data", "img.sif", "echo", "-B/tmp", "-h"]).args
    ['echo', '-B/tmp', '-h']
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

VERBS = ("exec", "run", "shell")

USAGE = {
    "exec": "hpcstack exec [OPTIONS] IMAGE CMD [ARGS...]",
    "run": "hpcstack run [OPTIONS] IMAGE [ARGS...]",
    "shell": "hpcstack shell [OPTIONS] IMAGE",
}
SUMMARY = {
    "exec": "Run a command inside an image.",
    "run": "Run an image's runscript with ARGS.",
    "shell": "An interactive shell inside an image.",
}
OPTIONS_HELP = """\
Options (before IMAGE; everything after IMAGE goes to the container):
  --runtime NAME        charliecloud | apptainer | singularity (default: config)
  -B, --bind SPEC       SRC[:DST[:ro]]; repeat, or separate with commas
  --nv                  NVIDIA GPUs
  --rocm                AMD GPUs
  -h, --help            show this message and exit
"""

# name -> (takes a value, canonical name)
_LONG = {"runtime": (True, "runtime"), "bind": (True, "bind"), "nv": (False, "nv"),
         "rocm": (False, "rocm"), "help": (False, "help")}
_SHORT = {"B": (True, "bind"), "h": (False, "help")}


class UsageError(Exception):
    """A command line that cannot be parsed; printed as one line, exit status 2."""


@dataclass
class LaunchArgs:
    """What an ``exec``/``run``/``shell`` command line asked for."""

    action: str
    image: Path | None = None
    args: list[str] = field(default_factory=list)
    runtime: str | None = None
    binds: list[str] = field(default_factory=list)
    nv: bool = False
    rocm: bool = False
    help: bool = False

    def set(self, name: str, value: str | None) -> None:
        if name == "bind":
            self.binds += [b for b in (value or "").split(",") if b]
        elif name == "runtime":
            self.runtime = value
        else:
            setattr(self, name, True)


def parse(action: str, argv: list[str]) -> LaunchArgs:
    """Options, then IMAGE, then the command's words as given."""
    out = LaunchArgs(action)
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if word.startswith("--"):
            _long(out, word[2:], words)
        elif word.startswith("-") and word != "-":
            _short(out, word[1:], words)
        else:
            words.insert(0, word)
            break
        if out.help:
            return out
    if not words:
        raise UsageError("no image given")
    out.image, out.args = Path(words[0]), words[1:]
    if action == "exec" and not out.args:
        raise UsageError("no command given")
    return out


def _long(out: LaunchArgs, text: str, rest: list[str]) -> None:
    name, eq, value = text.partition("=")
    if name not in _LONG:
        raise UsageError(f"unknown option --{name}")
    takes_value, canonical = _LONG[name]
    if not takes_value:
        if eq:
            raise UsageError(f"--{name} takes no value")
        out.set(canonical, None)
        return
    if not eq:
        if not rest:
            raise UsageError(f"--{name} needs a value")
        value = rest.pop(0)
    out.set(canonical, value)


def _short(out: LaunchArgs, cluster: str, rest: list[str]) -> None:
    for i, letter in enumerate(cluster):
        if letter not in _SHORT:
            raise UsageError(f"unknown option -{letter}")
        takes_value, canonical = _SHORT[letter]
        if not takes_value:
            out.set(canonical, None)
            continue
        value = cluster[i + 1:].removeprefix("=")
        if not value:
            if not rest:
                raise UsageError(f"-{letter} needs a value")
            value = rest.pop(0)
        out.set(canonical, value)
        return


def help_text(action: str) -> str:
    return f"Usage: {USAGE[action]}\n\n{SUMMARY[action]}\n\n{OPTIONS_HELP}"


def main(action: str, argv: list[str]) -> int:
    """Run ``hpcstack ACTION ARGV...``; returns the exit status (on success exec replaces us)."""
    from hpcstack.errors import UserError

    try:
        launch = parse(action, argv)
    except UsageError as exc:
        print(f"hpcstack {action}: {exc} (usage: {USAGE[action]}; see --help)",
              file=sys.stderr)
        return 2
    if launch.help:
        sys.stdout.write(help_text(action))
        return 0
    try:
        return _start(launch)
    except UserError as exc:
        print(f"hpcstack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpcstack: interrupted", file=sys.stderr)
        return 130


def _start(launch: LaunchArgs) -> int:
    from hpcstack.errors import UserError
    from hpcstack.runtime import Launch, execute

    assert launch.image is not None
    if not launch.image.exists():
        raise UserError(f"{launch.image}: no such image")
    gpu = "nvidia" if launch.nv else "amd" if launch.rocm else None
    execute(Launch(launch.action, launch.image, launch.args, binds=launch.binds, gpu=gpu),
            launch.runtime)
