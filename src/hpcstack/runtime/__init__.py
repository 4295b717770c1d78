"""Container runtimes: one adapter per runtime, and a SIF reader.

Typical use (what ``hpcstack exec`` and the module wrappers do)::

    from hpcstack.runtime import Launch, execute
    execute(Launch("exec", Path("gromacs.sif"), ["gmx_mpi", "mdrun"]), "charliecloud")

:class:`Launch` is runtime-neutral; :func:`select` gives the adapter for a
runtime name and :func:`detect` the one this host has.  ``Runtime.argv`` (pure)
shows the command line; :func:`execute` replaces the calling process with it
(no wrapper process left behind), :func:`run` waits and returns the exit status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from hpcstack.errors import UserError
from hpcstack.runtime.apptainer import Apptainer, Singularity
from hpcstack.runtime.base import Bind, Launch, Plan, Runtime
from hpcstack.runtime.charliecloud import Charliecloud
from hpcstack.runtime.sif import DataType, Descriptor, SifImage, read_sif

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on every launch
if TYPE_CHECKING:
    from typing import NoReturn

RUNTIMES: dict[str, type[Runtime]] = {
    "apptainer": Apptainer,
    "singularity": Singularity,
    "charliecloud": Charliecloud,
}

__all__ = [
    "RUNTIMES",
    "Apptainer",
    "Bind",
    "Charliecloud",
    "DataType",
    "Descriptor",
    "Launch",
    "Plan",
    "Runtime",
    "SifImage",
    "Singularity",
    "detect",
    "execute",
    "read_sif",
    "run",
    "select",
]


def select(name: str, environ: Mapping[str, str] | None = None) -> Runtime:
    """The adapter for runtime ``name``; ``environ`` defaults to this process's."""
    try:
        return RUNTIMES[name](environ)
    except KeyError:
        known = ", ".join(RUNTIMES)
        raise UserError(f"runtime {name!r}: unknown (known: {known})") from None


def detect(environ: Mapping[str, str] | None = None) -> Runtime:
    """``$HPCSTACK_RUNTIME`` if set, else the first of apptainer, singularity, ch-run installed."""
    env = os.environ if environ is None else environ
    if env.get("HPCSTACK_RUNTIME"):
        return select(env["HPCSTACK_RUNTIME"], environ)
    import shutil

    for name, cls in RUNTIMES.items():
        if shutil.which(cls.binary, path=env.get("PATH")):
            return select(name, environ)
    raise UserError("no container runtime found: install apptainer, singularity or charliecloud")


def execute(launch: Launch, runtime: Runtime | str | None = None) -> NoReturn:
    """Replace this process with the container (``os.execvpe``)."""
    _runtime(runtime).execute(launch)


def run(launch: Launch, runtime: Runtime | str | None = None) -> int:
    """Run the container as a child process and return its exit status."""
    return _runtime(runtime).run(launch)


def _runtime(runtime: Runtime | str | None) -> Runtime:
    if isinstance(runtime, Runtime):
        return runtime
    return detect() if runtime is None else select(runtime)
