"""The image under test: the host's very hpcc build, in a container, checked to be so.

The comparison means something only if every mode runs the same ``hpcc`` binary
with the same BLAS: the image is built (once, through hpcstack's own builder)
from a definition that pins the host's package versions, and before any round
the binaries are checksummed on the host and inside each container.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from hpcstack.bench.hpcc import render
from hpcstack.errors import UserError
from hpcstack.runtime import Launch, Runtime

#: Packages the image pins by name. The BLAS and MPI libraries the host's hpcc loads are
#: pinned through the packages that ship them, whose names differ between releases
#: (``libopenmpi3`` on Debian 12, ``libopenmpi40`` on Debian 13).
PINNED = ("hpcc", "openmpi-bin")
HOST_HINT = "install it on the host first: apt-get install hpcc libopenblas0-serial"


@dataclass(frozen=True)
class Deployed:
    """The module hpcstack deployed for the bench: its wrapper and its image copy."""

    module: str
    wrapper: Path
    image: Path


def cache_root() -> Path:
    """Where bench images and modules are kept between runs (per user, like the build cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "hpcstack" / "bench"


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{argv[0]}: not found ({what})") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()[-1]
        raise UserError(f"{what}: {tail}")
    return proc.stdout


def host_hpcc() -> Path:
    """The host's hpcc, the bare-metal side of every comparison."""
    found = shutil.which("hpcc")
    if not found:
        raise UserError(f"hpcc is not installed on this host; {HOST_HINT}")
    return Path(os.path.realpath(found))


def owner_package(path: str) -> str:
    """The Debian package that ships ``path`` (through dpkg's alternatives)."""
    out = _run(["dpkg-query", "-S", os.path.realpath(path)], f"which package has {path}")
    return out.split(":", 1)[0].strip()


def host_packages(checksums: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Package -> version for hpcc, the BLAS package the host's hpcc loads, its MPI.

    >>> host_packages(host_checksums())  # doctest: +SKIP
    {'hpcc': '1.5.0-3', 'libopenblas0-serial': '0.3.21+ds-4', 'openmpi-bin': '4.1.4-3+b1',
     'libopenmpi3': '4.1.4-3+b1'}
    """
    def owner(lib: str) -> list[str]:
        return [owner_package(checksums[lib][1])] if lib in checksums else []

    names = ["hpcc", *owner("libblas.so.3"), "openmpi-bin", *owner("libmpi.so.40")]
    fmt = "${Package}=${Version}\\n"
    out = _run(["dpkg-query", "-W", f"-f={fmt}", *names], "host package versions")
    versions = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    missing = [n for n in names if not versions.get(n)]
    if missing:
        raise UserError(f"{', '.join(missing)} not installed on this host; {HOST_HINT}")
    return {n: versions[n] for n in names}


def suite() -> str:
    """The host's Debian codename, so the image's libc and compilers are the host's."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise UserError("/etc/os-release: no VERSION_CODENAME (is this Debian?)")


def definition(packages: dict[str, str]) -> str:
    """The image's definition file (templates/hpcc.def.j2), pinned to ``packages``."""
    blas = next((n for n in packages if n not in PINNED and not n.startswith("libopenmpi")),
                "libblas3")
    pins = " ".join(f"{n}={v}" for n, v in packages.items())
    return render("hpcc.def.j2", suite=suite(), packages=packages, blas=blas, pins=pins)


def image_path(text: str) -> Path:
    """Where the image for definition ``text`` is kept: named by the definition's hash."""
    return cache_root() / f"hpcc-{hashlib.sha256(text.encode()).hexdigest()[:16]}.sif"


def build_image(text: str, quiet: bool = True) -> tuple[Path, bool]:
    """The SIF for definition ``text``: reused when built before, else built now."""
    from hpcstack.build.builder import BuildOptions, build

    sif = image_path(text)
    root = sif.parent
    if sif.exists():
        return sif, False
    root.mkdir(parents=True, exist_ok=True)
    deffile = sif.with_suffix(".def")
    deffile.write_text(text)
    # hpcstack's own builder even where Apptainer is installed: the definition relies on
    # its default mirror (the host's apt sources), which Apptainer's debootstrap lacks.
    build(str(deffile), sif, BuildOptions(force=True, quiet=quiet, engine="builtin"))
    return sif, True


@cache
def checksum_script() -> str:
    return resources.files("hpcstack.bench").joinpath("templates/checksums.sh").read_text()


def parse_checksums(text: str) -> dict[str, tuple[str, str]]:
    """``NAME SHA PATH`` lines -> {name: (sha, path)}."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def host_checksums() -> dict[str, tuple[str, str]]:
    host_hpcc()
    found = parse_checksums(_run(["sh", "-c", checksum_script()], "checksums on the host"))
    if "hpcc" not in found:
        raise UserError("could not checksum hpcc (is it installed?)")
    return found


def image_checksums(runtime: Runtime, image: Path, cwd: Path) -> dict[str, tuple[str, str]]:
    """The same checksums, taken inside ``image`` through ``runtime``."""
    plan = runtime.command(Launch("exec", image, ["/bin/sh", "-c", checksum_script()], cwd=cwd))
    try:
        proc = subprocess.run(plan.argv, env=plan.env, cwd=plan.cwd, capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{plan.argv[0]}: not found") from None
    if proc.returncode != 0:
        raise UserError(f"checksums inside {image}: {proc.stderr.strip()[-300:]}")
    return parse_checksums(proc.stdout)


def differences(host: dict[str, tuple[str, str]], inside: dict[str, tuple[str, str]]) -> list[str]:
    """What differs between two checksum sets (empty: the very same build)."""
    problems = []
    for name in sorted(set(host) | set(inside)):
        h, i = host.get(name), inside.get(name)
        if h is None or i is None:
            problems.append(f"{name}: {'only inside' if h is None else 'only on the host'}")
        elif h[0] != i[0]:
            problems.append(f"{name}: host {h[1]} ({h[0][:12]}) != image {i[1]} ({i[0][:12]})")
    return problems


def refuse_if_different(where: str, host: dict[str, tuple[str, str]],
                        inside: dict[str, tuple[str, str]]) -> None:
    problems = differences(host, inside)
    if problems:
        raise UserError(f"{where}: not the host's hpcc build, refusing to compare: "
                        + "; ".join(problems))


def deploy_module(sif: Path, version: str, runtime: str) -> Deployed:
    """Deploy ``sif`` as module hpcc-bench/VERSION (openmpi fix on) in the bench's own tree."""
    from hpcstack.modules.config import App, Site
    from hpcstack.modules.deploy import deploy
    from hpcstack.modules.render import Layout

    root = cache_root() / "modules"
    app = App(name="hpcc-bench", version=version.replace(":", "_").replace("~", "_"),
              image=str(sif), commands=["hpcc"], mpi="openmpi", state="default")
    site = Site(root=str(root), module_system="lmod", runtime=runtime, apps=[app])
    report = deploy(site, warn=lambda _msg: None)
    image = Path(report.deployed[0].image)
    return Deployed(app.module, Path(Layout(str(root)).bin_dir(app)) / "hpcc", image)
