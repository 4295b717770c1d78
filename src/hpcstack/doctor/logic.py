"""What each node check concludes from what was read: pure, no I/O.

Every function takes the facts (a file's text, a mode, a command's output) and
returns :class:`Finding` objects; :mod:`hpcstack.doctor.probe` gathers the facts.
A problem's ``fix`` is the exact command an admin runs.
"""

from __future__ import annotations

import re
import stat
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from hpcstack.files import human_size

SUBIDS_NEEDED = 65536  # UIDs 1..65535 inside a build map to the user's range
#: File systems that are not local disk (sandboxes there break or crawl: Apptainer
#: issues #1751, #2190).  Names as /proc/self/mountinfo writes them.
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph",
              "fuse.sshfs", "glusterfs", "fuse.glusterfs", "panfs", "wekafs", "fuse.gcsfuse",
              "9p", "afs", "ncpfs", "orangefs", "fuse.ceph-fuse"}


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        """One line: status, check, what was found, and the fix when there is one."""
        text = f"{self.status.value.upper():<4} {self.check}: {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def ok(check: str, message: str) -> Finding:
    return Finding(check, Status.OK, message)


# --- subordinate IDs ---------------------------------------------------------------------


def subid_ranges(text: str, user: str, uid: int) -> list[tuple[int, int]]:
    """(start, count) of ``user``'s lines (by name or UID) in an /etc/subuid-style text."""
    found = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and \
                parts[1].isdigit() and parts[2].isdigit():
            found.append((int(parts[1]), int(parts[2])))
    return found


def next_free_start(texts: list[str]) -> int:
    """The first 65536-aligned start above every range in the files (for the fix)."""
    end = 100000
    for text in texts:
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return -(-end // SUBIDS_NEEDED) * SUBIDS_NEEDED


def subid_finding(kind: str, path: str, text: str | None, user: str, uid: int,
                  free_start: int) -> Finding:
    """``kind`` is uid or gid; ``text`` None when the file is missing."""
    check = f"sub{kind}"
    start, end = free_start, free_start + SUBIDS_NEEDED - 1
    fix = f"usermod --add-sub{kind}s {start}-{end} {user}"
    if text is None:
        return Finding(check, Status.FAIL, f"{path} is missing", fix)
    ranges = subid_ranges(text, user, uid)
    total = sum(count for _start, count in ranges)
    if not ranges:
        return Finding(check, Status.FAIL, f"{user} has no subordinate {kind.upper()} range "
                       f"in {path}", fix)
    if total < SUBIDS_NEEDED:
        return Finding(check, Status.FAIL, f"{user} has {total} subordinate "
                       f"{kind.upper()}s in {path}, {SUBIDS_NEEDED} needed", fix)
    shown = ", ".join(f"{s}-{s + c - 1}" for s, c in ranges)
    return ok(check, f"{user} has {total} subordinate {kind.upper()}s ({shown}) in {path}")


# --- user namespaces ---------------------------------------------------------------------


def userns_findings(max_userns: str | None, unprivileged_clone: str | None,
                    apparmor_restrict: str | None) -> list[Finding]:
    """The sysctls that turn unprivileged user namespaces off (None: not on this kernel)."""
    check = "user namespaces"
    if max_userns is None:
        return [Finding(check, Status.FAIL, "/proc/sys/user/max_user_namespaces is missing "
                        "(a kernel without user namespaces)", "boot a kernel built with "
                        "CONFIG_USER_NS=y")]
    found = []
    if int(max_userns.strip() or 0) < 1:
        found.append(Finding(check, Status.FAIL, f"user.max_user_namespaces is "
                             f"{max_userns.strip()}", "sysctl -w user.max_user_namespaces=15000 "
                             "&& echo user.max_user_namespaces=15000 > "
                             "/etc/sysctl.d/90-hpcstack-userns.conf"))
    if unprivileged_clone is not None and unprivileged_clone.strip() == "0":
        found.append(Finding(check, Status.FAIL, "kernel.unprivileged_userns_clone is 0",
                             "sysctl -w kernel.unprivileged_userns_clone=1 && echo "
                             "kernel.unprivileged_userns_clone=1 > "
                             "/etc/sysctl.d/90-hpcstack-userns.conf"))
    if apparmor_restrict is not None and apparmor_restrict.strip() == "1":
        found.append(Finding(check, Status.FAIL, "kernel.apparmor_restrict_unprivileged_userns"
                             " is 1", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
                             " && echo kernel.apparmor_restrict_unprivileged_userns=0 > "
                             "/etc/sysctl.d/90-hpcstack-userns.conf"))
    return found or [ok(check, f"enabled (user.max_user_namespaces = {max_userns.strip()})")]


# --- the distribution ------------------------------------------------------------------

#: The Debian releases hpcstack installs on and is tested on (docs/debian.md).
RELEASES = {"12": "bookworm", "13": "trixie"}


def os_release_fields(text: str) -> dict[str, str]:
    """``/etc/os-release`` as a dict (values unquoted)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip('"')
    return fields


def release_finding(os_release: str | None, path: str = "/etc/os-release") -> Finding:
    """Debian 12 or 13; anything else may lack a package or behave otherwise.

    >>> release_finding('ID=debian\\nVERSION_ID="13"\\nVERSION_CODENAME=trixie\\n').line()
    'OK   release: Debian 13 (trixie)'
    """
    check = "release"
    fields = os_release_fields(os_release or "")
    name = fields.get("PRETTY_NAME") or fields.get("NAME") or "an unknown system"
    if fields.get("ID") == "debian" and RELEASES.get(fields.get("VERSION_ID", "")):
        return ok(check, f"Debian {fields['VERSION_ID']} ({RELEASES[fields['VERSION_ID']]})")
    return Finding(check, Status.WARN, f"{name} ({path}): hpcstack installs on and is "
                   "tested on Debian 12 and 13 only", "use Debian 12 (bookworm) or 13 (trixie); "
                   "see docs/debian.md")


def open_mpi_version(output: str) -> str | None:
    """The version ``mpirun --version`` reports when it is Open MPI's (None otherwise).

    >>> open_mpi_version("mpirun (Open MPI) 5.0.7\\n\\nReport bugs to ...")
    '5.0.7'
    """
    m = re.search(r"\(Open MPI\) (\d+\.\d+(?:\.\d+)?)", output)
    return m.group(1) if m else None


# --- setuid helpers and devices ----------------------------------------------------------


def setuid_finding(name: str, path: str | None, mode: int, owner: int,
                   has_file_caps: bool) -> Finding:
    """newuidmap/newgidmap: root-owned and setuid, or given file capabilities."""
    if path is None:
        return Finding(name, Status.FAIL, "not found on PATH", "apt-get install uidmap")
    if has_file_caps or (owner == 0 and mode & stat.S_ISUID):
        how = "file capabilities" if has_file_caps else "setuid root"
        return ok(name, f"{path} ({how})")
    return Finding(name, Status.FAIL, f"{path} is not setuid root (mode "
                   f"{stat.S_IMODE(mode):04o}, owner {owner})",
                   f"chown root {path} && chmod u+s {path}")


def device_finding(name: str, path: str, mode: int | None, why: str) -> Finding:
    """A device every user must open read-write (mode 0666, as distributions ship it)."""
    if mode is None:
        return Finding(name, Status.FAIL, f"{path} is missing ({why})",
                       f"modprobe {name.split('/')[-1]}")
    if not stat.S_ISCHR(mode):
        return Finding(name, Status.FAIL, f"{path} is not a character device", f"rm {path} "
                       f"&& modprobe {name.split('/')[-1]}")
    if stat.S_IMODE(mode) & 0o666 != 0o666:
        return Finding(name, Status.FAIL, f"{path} is mode {stat.S_IMODE(mode):04o}, "
                       f"ordinary users cannot open it ({why})", f"chmod 0666 {path}")
    return ok(name, f"{path} mode {stat.S_IMODE(mode):04o}")


# --- tools and their versions ------------------------------------------------------------

VERSION = re.compile(r"(?<![\w.])(\d+\.\d+(?:\.\d+)?)")  # not go1.19.8's


def version_of(output: str) -> str | None:
    r"""The first dotted version number in a tool's output.

    >>> version_of("unsquashfs version 4.5.1 (2022/03/17)")
    '4.5.1'
    >>> version_of("Version:  unknown\nRuntime:  go1.19.8 (linux/amd64)") is None
    True
    """
    m = VERSION.search(output)
    return m.group(1) if m else None


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def tool_finding(name: str, path: str | None, output: str, package: str,
                 minimum: str | None = None) -> Finding:
    """Found on PATH, and at ``minimum`` when one is needed (``unshare --map-auto``)."""
    if path is None:
        return Finding(name, Status.FAIL, "not found on PATH", f"apt-get install {package}")
    version = version_of(output)
    if minimum and version and _parts(version) < _parts(minimum):
        return Finding(name, Status.FAIL, f"{path} is {version}, {minimum} or later needed",
                       f"apt-get install {package} (from a release that has {minimum})")
    return ok(name, f"{path} {version or '(version not reported)'}")


def runtime_finding(name: str | None, error: str, version_output: str) -> Finding:
    if name is None:
        return Finding("runtime", Status.FAIL, error, "apt-get install charliecloud (or "
                       "install apptainer)")
    return ok("runtime", f"{name} {version_of(version_output) or '(version not reported)'}")


def modules_finding(found: dict[str, bool]) -> Finding:
    """Lmod's or Environment Modules' bash init: either will do."""
    present = [path for path, there in found.items() if there]
    if present:
        return ok("module system", f"{present[0]}")
    return Finding("module system", Status.FAIL, "neither Lmod nor Environment Modules: "
                   f"none of {', '.join(found)}", "apt-get install lmod")


# --- Slurm and MUNGE -------------------------------------------------------------------


def mpi_types(output: str) -> set[str]:
    """The plugin names ``srun --mpi=list`` prints (Slurm 22.05 and later)."""
    names = set()
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("srun: "):
            line = line[len("srun: "):]
        for word in re.split(r"[\s,]+", line):
            if re.fullmatch(r"(mpi/)?(none|pmi2|pmix(_v\d+)?|cray_shasta|openmpi|mvapich)",
                            word):
                names.add(word.removeprefix("mpi/"))
    return names


SRUN_MISSING = "srun not found on PATH"


#: Which images' ranks the host's Open MPI ``mpirun`` starts, one container per rank, by
#: its major version (docs/modules.md, "Across Debian releases", measured on Debian 12/13).
MPIRUN_STARTS = {"4": "images with Open MPI 4.x or 5.x",
                 "5": "images with Open MPI 5.x only (Open MPI 4 images: srun --mpi=pmix)"}


def mpirun_detail(mpirun: str, ompi: str | None) -> str:
    """Where the host's mpirun is, and whose ranks it can start: Open MPI 5's PRRTE cannot
    start Open MPI 4's (ORTE), so a Debian 13 host's mpirun fails Debian 12 images."""
    starts = MPIRUN_STARTS.get((ompi or "").split(".")[0])
    return f"{mpirun} (Open MPI {ompi}: starts {starts})" if starts else mpirun


def launcher_findings(promised: list[str], listed: set[str] | None, srun_error: str,
                      mpirun: str | None, libpmix: str | None,
                      ompi: str | None = None) -> list[Finding]:
    """Each launcher the site promises (site file ``launchers:``) against this node;
    ``ompi`` is the version of Open MPI behind ``mpirun``."""
    from hpcstack.modules.mpicheck import NEEDS

    found = []
    for launcher in promised:
        check = f"launcher {launcher}"
        if launcher == "mpirun":
            found.append(ok(check, mpirun_detail(mpirun, ompi)) if mpirun else Finding(
                check, Status.FAIL, "mpirun not found on PATH", f"apt-get install "
                f"{NEEDS['mpirun'].split()[0]}"))
        elif listed is None and srun_error == SRUN_MISSING:
            found.append(Finding(check, Status.FAIL, srun_error, "apt-get install "
                                 "slurm-client"))
        elif listed is None:
            found.append(Finding(check, Status.FAIL, f"srun --mpi=list failed: {srun_error}",
                                 "point SLURM_CONF at the cluster's slurm.conf (or set up "
                                 "configless Slurm) on this node"))
        elif launcher not in listed and not (launcher == "pmix" and any(
                n.startswith("pmix") for n in listed)):
            found.append(Finding(check, Status.FAIL, f"Slurm lists no mpi/{launcher} "
                                 f"plugin (it has: {', '.join(sorted(listed)) or 'none'})",
                                 f"apt-get install {NEEDS[launcher].split()[0]}"))
        elif launcher == "pmix" and libpmix is None:
            found.append(Finding(check, Status.FAIL, "Slurm's PMIx plugin cannot load: "
                                 "no libpmix.so", "apt-get install libpmix-dev"))
        else:
            found.append(ok(check, f"srun --mpi={launcher}"))
    if not promised:
        found.append(ok("launchers", "the site promises none (site file launchers:)"))
    return found


def munge_finding(returncode: int | None, error: str, socket: str | None) -> Finding:
    where = f" at {socket}" if socket else ""
    if returncode == 0:
        return ok("munge", f"munged answers{where}")
    why = error.strip().splitlines()[-1] if error.strip() else "munge not found"
    return Finding("munge", Status.FAIL, f"munged does not answer{where}: {why}",
                   "systemctl enable --now munge")


# --- file systems and space ------------------------------------------------------------


def mount_of(mountinfo: str, path: str) -> tuple[str, str]:
    """(mount point, file system type) holding ``path``, from /proc/self/mountinfo text."""
    best, fstype = "", ""
    target = PurePosixPath(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        if (target == PurePosixPath(point) or PurePosixPath(point) in target.parents) \
                and len(point) >= len(best):
            best, fstype = point, after[0] if after else ""
    return best, fstype


def netfs_finding(what: str, path: str, point: str, fstype: str, variable: str) -> Finding:
    check = f"{what} on local disk"
    if fstype in NETWORK_FS:
        return Finding(check, Status.WARN, f"{path} is on {fstype} ({point}): builds there "
                       "are slow or fail (no subordinate-ID ownership, no xattrs)",
                       f"set {variable} to a directory on local disk")
    return ok(check, f"{path} on {fstype or 'unknown'} ({point})")


def disk_finding(what: str, path: str, free: int, needed: int, variable: str) -> Finding:
    check = f"free disk in {what}"
    if free < needed:
        return Finding(check, Status.FAIL,
                       f"{path} has {human_size(free)} free, {human_size(needed)} needed",
                       f"free space there, or set {variable} to a directory with "
                       "more")
    return ok(check, f"{path} has {human_size(free)} free")
