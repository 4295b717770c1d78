"""Gather a node's facts for :mod:`hpcstack.doctor.logic`: files, modes, commands.

Every place a check looks is a field of :class:`Inputs`, so a test aims one check at
a broken copy (a subuid file without the user, a device node of mode 0600, a PATH
without siftool) and leaves the machine alone.
"""

from __future__ import annotations

import ctypes.util
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcstack.doctor import logic
from hpcstack.doctor.logic import Finding, Status

GiB = 2**30


def _tmp_dir() -> Path:
    return Path(os.environ.get("HPCSTACK_TMPDIR") or os.environ.get("TMPDIR") or "/tmp")


def _cache_dir() -> Path:
    from hpcstack.build.cache import cache_root

    return cache_root()


@dataclass
class Inputs:
    """Where each check looks (defaults: this node, for the calling user)."""

    user: str = field(default_factory=lambda: pwd.getpwuid(os.getuid()).pw_name)
    subuid: Path = Path("/etc/subuid")
    subgid: Path = Path("/etc/subgid")
    proc_sys: Path = Path("/proc/sys")
    path: str = field(default_factory=lambda: os.environ.get("PATH", "/usr/bin:/bin"))
    fuse: Path = Path("/dev/fuse")
    tun: Path = Path("/dev/net/tun")
    module_inits: tuple[Path, ...] = (Path("/usr/share/lmod/lmod/init/bash"),
                                      Path("/usr/share/modules/init/bash"))
    launchers: list[str] = field(default_factory=list)
    slurm_env: dict[str, str] = field(default_factory=dict)
    munge_socket: str | None = None
    mountinfo: Path = Path("/proc/self/mountinfo")
    os_release: Path = Path("/etc/os-release")
    build_dir: Path = field(default_factory=_tmp_dir)
    build_variable: str = "HPCSTACK_TMPDIR"
    cache_dir: Path = field(default_factory=_cache_dir)
    cache_variable: str = "HPCSTACK_CACHEDIR"
    min_free: int = 2 * GiB
    runtime_env: dict[str, str] = field(default_factory=lambda: {
        k: v for k, v in os.environ.items() if k == "HPCSTACK_RUNTIME"})

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.path)

    def run(self, argv: list[str], env: dict[str, str] | None = None, stdin: bytes = b""
            ) -> subprocess.CompletedProcess[bytes] | None:
        """A command by name on this PATH; None when it is not there or hangs."""
        exe = self.which(argv[0])
        if exe is None:
            return None
        try:
            return subprocess.run([exe, *argv[1:]], input=stdin, capture_output=True,
                                  timeout=20, env={**os.environ, "PATH": self.path,
                                                   **(env or {})})
        except (OSError, subprocess.TimeoutExpired):
            return None


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def release(i: Inputs) -> list[Finding]:
    return [logic.release_finding(read(i.os_release), str(i.os_release))]


def subids(i: Inputs) -> list[Finding]:
    try:
        uid = pwd.getpwnam(i.user).pw_uid
    except KeyError:
        return [Finding("subuid", Status.FAIL, f"{i.user}: no such user", "useradd -m "
                        f"{i.user}")]
    texts = {i.subuid: read(i.subuid), i.subgid: read(i.subgid)}
    start = logic.next_free_start([t for t in texts.values() if t])
    return [logic.subid_finding(kind, str(path), texts[path], i.user, uid, start)
            for kind, path in (("uid", i.subuid), ("gid", i.subgid))]


def userns(i: Inputs) -> list[Finding]:
    return logic.userns_findings(read(i.proc_sys / "user" / "max_user_namespaces"),
                                 read(i.proc_sys / "kernel" / "unprivileged_userns_clone"),
                                 read(i.proc_sys / "kernel" /
                                      "apparmor_restrict_unprivileged_userns"))


def idmaps(i: Inputs) -> list[Finding]:
    found = []
    for name in ("newuidmap", "newgidmap"):
        path = i.which(name)
        mode = owner = 0
        caps = False
        if path is not None:
            st = os.stat(path)
            mode, owner = st.st_mode, st.st_uid
            try:
                caps = bool(os.getxattr(path, "security.capability"))
            except OSError:
                caps = False
        found.append(logic.setuid_finding(name, path, mode, owner, caps))
    return found


def devices(i: Inputs) -> list[Finding]:
    found = []
    for name, path, why in (("fuse", i.fuse, "squashfuse and ch-run IMAGE.sqfs mount "
                             "images through it"),
                            ("net/tun", i.tun, "U2CB builds and sessions get their "
                             "network through it (pasta)")):
        try:
            mode: int | None = os.stat(path).st_mode
        except OSError:
            mode = None
        found.append(logic.device_finding(name, str(path), mode, why))
    return found


def tools(i: Inputs) -> list[Finding]:
    found = []
    for name, argv, package, minimum in (
            ("unshare", ["unshare", "--version"], "util-linux", "2.38"),  # --map-auto
            ("squashfuse", ["squashfuse", "--version"], "squashfuse", None),
            ("unsquashfs", ["unsquashfs", "-version"], "squashfs-tools", None),
            ("mksquashfs", ["mksquashfs", "-version"], "squashfs-tools", None),
            ("siftool", ["siftool", "version"], "siftool", None)):
        proc = i.run(argv)
        out = (proc.stdout + proc.stderr).decode(errors="replace") if proc else ""
        found.append(logic.tool_finding(name, i.which(name), out, package, minimum))
    return found


def runtime(i: Inputs) -> list[Finding]:
    from hpcstack.errors import UserError
    from hpcstack.runtime import detect

    try:
        found = detect({"PATH": i.path, **i.runtime_env})
    except UserError as err:
        return [logic.runtime_finding(None, str(err), "")]
    binary = type(found).binary
    proc = i.run([binary, "--version"], env={"USER": i.user})
    out = (proc.stdout + proc.stderr).decode(errors="replace") if proc else ""
    return [logic.runtime_finding(f"{found.name} ({i.which(binary)})", "", out)]


def modules(i: Inputs) -> list[Finding]:
    return [logic.modules_finding({str(p): p.is_file() for p in i.module_inits})]


def launchers(i: Inputs) -> list[Finding]:
    listed: set[str] | None = None
    error = logic.SRUN_MISSING
    if any(name != "mpirun" for name in i.launchers):
        proc = i.run(["srun", "--mpi=list"], env=i.slurm_env)
        if proc is not None:
            text = (proc.stdout + proc.stderr).decode(errors="replace")
            if proc.returncode == 0:
                listed = logic.mpi_types(text)
            else:
                error = text.strip().splitlines()[-1] if text.strip() else \
                    f"exit status {proc.returncode}"
    libpmix = ctypes.util.find_library("pmix") if "pmix" in i.launchers else None
    ompi = None
    if "mpirun" in i.launchers and (proc := i.run(["mpirun", "--version"])) is not None:
        ompi = logic.open_mpi_version((proc.stdout + proc.stderr).decode(errors="replace"))
    return logic.launcher_findings(i.launchers, listed, error, i.which("mpirun"), libpmix,
                                   ompi)


def munge(i: Inputs) -> list[Finding]:
    socket = [f"--socket={i.munge_socket}"] if i.munge_socket else []
    cred = i.run(["munge", "-n", *socket])
    if cred is None:
        return [logic.munge_finding(None, "munge not found on PATH", i.munge_socket)]
    if cred.returncode != 0:
        return [logic.munge_finding(cred.returncode, cred.stderr.decode(errors="replace"),
                                    i.munge_socket)]
    back = i.run(["unmunge", "--output=/dev/null", *socket], stdin=cred.stdout)
    code = back.returncode if back else None
    return [logic.munge_finding(code, back.stderr.decode(errors="replace") if back else
                                "unmunge not found on PATH", i.munge_socket)]


def existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a cache not made yet is made there)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def storage(i: Inputs) -> list[Finding]:
    mountinfo = read(i.mountinfo) or ""
    found = []
    for what, path, variable in (("build directory", i.build_dir, i.build_variable),
                                 ("cache", i.cache_dir, i.cache_variable)):
        point, fstype = logic.mount_of(mountinfo, str(existing(path)))
        found.append(logic.netfs_finding(what, str(path), point, fstype, variable))
    for what, path, variable in (("build directory", i.build_dir, i.build_variable),
                                 ("cache", i.cache_dir, i.cache_variable)):
        free = shutil.disk_usage(existing(path)).free
        found.append(logic.disk_finding(what, str(path), free, i.min_free, variable))
    return found


#: Every check, in the order they print.
CHECKS: dict[str, Callable[[Inputs], list[Finding]]] = {
    "release": release, "subids": subids, "userns": userns, "idmaps": idmaps, "devices": devices,
    "tools": tools, "runtime": runtime, "modules": modules, "launchers": launchers,
    "munge": munge, "storage": storage,
}


def run_checks(inputs: Inputs, only: list[str] | None = None) -> list[Finding]:
    """Every check's findings (a check that breaks is itself a finding, not a crash)."""
    found: list[Finding] = []
    for name, check in CHECKS.items():
        if only is not None and name not in only:
            continue
        try:
            found.extend(check(inputs))
        except Exception as err:  # report and go on: the other checks still count
            found.append(Finding(name, Status.FAIL, f"the check itself failed: {err}"))
    return found
