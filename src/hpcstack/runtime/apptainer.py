"""Apptainer and SingularityCE: their documented command line, nothing more.

``apptainer exec [--nv|--rocm] [-B SRC[:DST[:ro]]]... [--env K=V]... IMAGE CMD...``,
``apptainer run IMAGE ARGS...``, ``apptainer shell IMAGE``, ``apptainer test IMAGE``;
``singularity`` takes the same flags.  Apptainer itself binds ``$HOME``, the
working directory and ``/tmp``, keeps the working directory, passes the host
environment and gives ``--env`` precedence over the image's ``%environment``,
so the adapter only has to spell the request.

Two quirks of the CLI are handled here: ``--env`` is a Go ``stringToString``
flag (a value with more than one ``=`` is read as CSV, a single pair loses
trailing double quotes), so such pairs are CSV-quoted, and a pair that cannot
be spelled safely goes through ``APPTAINERENV_K`` / ``SINGULARITYENV_K`` in the
environment instead.  ``-B`` splits on commas, so a path with a comma is refused.
"""

from __future__ import annotations

from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.runtime.base import Bind, Launch, Plan, Runtime

GPU_FLAGS = {"nvidia": "--nv", "amd": "--rocm"}


class Apptainer(Runtime):
    """Apptainer (``apptainer``); see the module docstring for the command lines."""

    name = "apptainer"
    binary = "apptainer"
    env_prefix = "APPTAINERENV_"

    def plan(self, launch: Launch) -> Plan:
        argv = [self.binary, launch.action]
        if launch.gpu:
            argv.append(GPU_FLAGS[launch.gpu])
        for bind in launch.bind_list():
            argv += ["-B", _bind_spec(bind)]
        env = dict(self.environ)
        for key, value in launch.env.items():
            flag = env_flag(key, value)
            if flag is None:
                env[self.env_prefix + key] = value
            else:
                argv += ["--env", flag]
        argv.append(_image_arg(launch.image))
        argv += launch.args
        return Plan(argv=argv, env=env, cwd=launch.workdir())


class Singularity(Apptainer):
    """SingularityCE or legacy Singularity (``singularity``): Apptainer's flags."""

    name = "singularity"
    binary = "singularity"
    env_prefix = "SINGULARITYENV_"


def env_flag(key: str, value: str) -> str | None:
    """The ``--env`` argument that Go's pflag reads back as exactly ``key=value``.

    None when no spelling survives pflag (then use the ``*ENV_`` variable).
    """
    pair = f"{key}={value}"
    if "\r" in pair:
        return None  # Go's CSV reader drops carriage returns
    if pair.count("=") == 1:
        return None if pair.endswith('"') else pair  # pflag trims '"' around a single pair
    if any(c in pair for c in ',"\n'):
        return '"' + pair.replace('"', '""') + '"'
    return pair


def _bind_spec(bind: Bind) -> str:
    if "," in bind.src or "," in bind.dst:
        raise UserError(f"bind {bind.spec()!r}: Apptainer cannot bind a path containing ','")
    return bind.spec()


def _image_arg(image: Path) -> str:
    """The image path as an argument that cannot be taken for a flag."""
    text = str(image)
    return f"./{text}" if text.startswith("-") else text
