"""Container command lines for the job scripts, taken from the runtime adapters.

Apptainer and Singularity command lines depend only on the request, so the
adapter's argv is written into the script as it is.  Charliecloud's depends on
the user running it (the per-user extracted copy of the image, ``$HOME``, the
working directory), so the script calls ``hpcstack exec --runtime charliecloud``,
which asks the same adapter at job time, as that user.

Arguments may refer to the job's shell variables (``${port}``, ``${config}``):
such words are double-quoted so the shell expands them; every other word is
single-quoted.  The command is written as a bash array, so tests can read it back.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hpcstack.modules.config import Site
from hpcstack.runtime import Launch, select
from hpcstack.studio.config import Studio, StudioApp

_VAR = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def image_of(app: StudioApp, site: Site | None) -> str:
    """The SIF an app runs: its own ``image``, or its module's from the modules site file."""
    if app.image is not None:
        return app.image
    assert site is not None and app.module is not None  # checked by load_studio
    return next(m.image for m in site.apps if m.module == app.module)


def container_argv(studio: Studio, app: StudioApp, site: Site | None,
                   args: list[str], binds: list[str] = ()) -> list[str]:
    """The argv that runs ``args`` in the app's image with the studio's runtime."""
    return image_argv(studio, image_of(app, site), args, [*app.binds, *binds], app.gpu)


def image_argv(studio: Studio, image: str, args: list[str], binds: list[str] = (),
               gpu: str | None = None) -> list[str]:
    """The argv that runs ``args`` in ``image`` (the studio's binds first)."""
    all_binds = [*studio.binds, *binds]
    if studio.runtime == "charliecloud":
        argv = [studio.hpcstack, "exec", "--runtime", "charliecloud"]
        for bind in all_binds:
            argv += ["--bind", bind]
        if gpu:
            argv.append("--nv" if gpu == "nvidia" else "--rocm")
        return [*argv, image, *args]
    launch = Launch("exec", Path(image), list(args), binds=all_binds, gpu=gpu, cwd=Path("/"))
    return select(studio.runtime, environ={}).argv(launch)


def shell_word(word: str) -> str:
    """``word`` quoted for bash; ``${name}`` references inside it still expand."""
    if not _VAR.search(word):
        return shlex.quote(word)
    escaped = re.sub(r'(["\\`])', r"\\\1", word)
    escaped = re.sub(r"\$(?!\{[A-Za-z_])", r"\\$", escaped)
    return f'"{escaped}"'


def bash_array(name: str, argv: list[str]) -> str:
    """``name=( WORD ... )`` on one line."""
    return f"{name}=({' '.join(shell_word(w) for w in argv)})"
