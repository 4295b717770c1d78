"""Build engines: hpcstack's own unprivileged pipeline, or Apptainer where installed.

``auto`` delegates to ``apptainer build --fakeroot`` when Apptainer is on
``PATH`` — a site that has it gets its exact behaviour — and otherwise uses the
builtin pipeline, which needs only util-linux, mmdebstrap, squashfs-tools and
siftool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from hpcstack.build.pack import mksquashfs_flags
from hpcstack.errors import UserError

if TYPE_CHECKING:
    from hpcstack.build.builder import BuildOptions

ENGINES = ("auto", "builtin", "apptainer")


def choose(engine: str, which=shutil.which) -> str:
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: unknown engine (choose from {', '.join(ENGINES)})")
    if engine == "auto":
        return "apptainer" if which("apptainer") else "builtin"
    if engine == "apptainer" and not which("apptainer"):
        raise UserError("--engine apptainer: apptainer is not installed on this host")
    return engine


def apptainer_argv(spec: str, output: Path, options: BuildOptions) -> list[str]:
    """``apptainer build --fakeroot`` with the same options we were given."""
    argv = ["apptainer", "build", "--fakeroot"]
    if options.sandbox:
        argv.append("--sandbox")
    if options.force:
        argv.append("--force")
    if not options.run_test:
        argv.append("--notest")
    if options.docker_insecure:
        argv.append("--nohttps")
    if not options.sandbox:
        argv += ["--mksquashfs-args", " ".join(mksquashfs_flags(options.compression))]
    return [*argv, str(output), spec]


def apptainer_build(spec: str, output: Path, options: BuildOptions) -> None:
    status = subprocess.run(apptainer_argv(spec, output, options), check=False).returncode
    if status != 0:
        raise UserError(f"apptainer build failed with exit status {status}")
