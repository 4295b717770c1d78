"""Build engines: hpcstack's own unprivileged pipeline, or Apptainer where installed.

``auto`` delegates to ``apptainer build --fakeroot`` when Apptainer is on
``PATH`` — a site that has it gets its exact behaviour — and otherwise uses the
builtin pipeline, which needs only util-linux, mmdebstrap, squashfs-tools and
siftool.

Apptainer has no option naming a registry's CA: it pulls ``docker://`` with Go's
TLS stack, which reads extra CA certificates from ``$SSL_CERT_DIR``, so
``--docker-cert-dir DIR`` becomes ``SSL_CERT_DIR=DIR:/etc/ssl/certs`` (the
system's CAs stay trusted).  ``--docker-insecure`` becomes ``--no-https``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from hpcstack.build.pack import mksquashfs_flags
from hpcstack.errors import UserError

if TYPE_CHECKING:
    from hpcstack.build.builder import BuildOptions

ENGINES = ("auto", "builtin", "apptainer")
#: Where Debian (and most distributions) keep the system's CA certificates, one per file.
SYSTEM_CERT_DIR = "/etc/ssl/certs"


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
        argv.append("--no-https")
    if not options.sandbox:
        argv += ["--mksquashfs-args", " ".join(mksquashfs_flags(options.compression))]
    return [*argv, str(output), spec]


def apptainer_env(options: BuildOptions, environ: dict[str, str] | None = None
                  ) -> dict[str, str]:
    """The environment for ``apptainer build``: ours, plus the registry's CA if given."""
    env = dict(os.environ if environ is None else environ)
    if options.docker_cert_dir:
        certs = os.path.abspath(options.docker_cert_dir)
        env["SSL_CERT_DIR"] = f"{certs}:{env.get('SSL_CERT_DIR', SYSTEM_CERT_DIR)}"
    return env


def apptainer_build(spec: str, output: Path, options: BuildOptions) -> None:
    argv = apptainer_argv(spec, output, options)
    try:
        status = subprocess.run(argv, env=apptainer_env(options), check=False).returncode
    except FileNotFoundError:
        raise UserError("--engine apptainer: apptainer is not installed on this host") from None
    if status != 0:
        raise UserError(f"apptainer build failed with exit status {status}")
