"""A jail for every U2CB build and session: the job sees its own files and nothing else.

The model is rootless Podman's and Sylabs' remote builder's.  A job starts in
new user (fake root, with the account's subordinate IDs), mount, PID, IPC, UTS
and network namespaces, and ``pivot_root``\\ s (never ``chroot``: ``/proc/1/root``
escapes that) into a root that holds only:

- read-only system directories for the tools (``/usr`` and its merged-``/usr``
  links, an allow-list of ``/etc``, the Python that runs hpcstack);
- the job's own directories (:attr:`JailSpec.binds`), each read-only or writable;
- a fresh ``/proc`` (PID 1 is the job itself), a ``/dev`` of harmless device
  nodes, ``/sys``, and private ``/tmp`` and ``/dev/shm``.

Other users' containers, the service's data directory, database, settings and
credentials (the MUNGE socket, tokens) are simply not there.  The network is
the job's own: ``pasta`` gives it user-mode access to the outside (package
mirrors, registries) with the host's loopback, its addresses and the gateway
unreachable, so neither the service's port nor PostgreSQL nor munged can be
called; with ``network=False`` the job has a loopback of its own and nothing else.

Two halves: :func:`start` (outside, as the service account) starts the job in
new namespaces and attaches the network; :func:`enter` (inside, as its PID 1)
builds the root and pivots into it::

    proc = jail.start("hpcstack.build.job", [path, "--inside"], spec, stdout=log)
    # ... and in that process:  jail.enter(spec)   # now / is the jail
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.lifetime import die_with_parent

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc the tools need: names, resolver, TLS roots, apt's sources (the host's
# mirrors), skopeo's policy, the dynamic linker.  Nothing else (no service settings,
# no credentials) enters a jail.
ETC_ALLOWED = ("passwd", "group", "nsswitch.conf", "host.conf", "gai.conf", "hosts",
               "resolv.conf", "ssl", "ca-certificates", "ca-certificates.conf", "apt",
               "containers", "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
               "localtime", "timezone", "debian_version", "os-release", "mime.types",
               "xattr.conf", "protocols", "services")
HOST_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PASTA_FLAGS = ("--config-net", "--quiet", "-U", "none", "-t", "none", "-u", "none",
               "--no-map-gw")
READY, GO = b"r", b"g"
PASTA_START_S = 10.0
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_KEPT = ("LANG", "LC_ALL", "TZ", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
            "HTTPS_PROXY", "NO_PROXY")


@dataclass
class Bind:
    """A host path the job sees at the same path, read-only unless ``writable``."""

    path: str
    writable: bool = False


@dataclass
class JailSpec:
    """What a jailed job may see and reach.

    ``scratch`` is an empty host directory the job may use as the mount point of
    its root (only inside its own mount namespace).  With ``rootfs`` set the jail's
    root is that tree itself (a ``connect`` session in a sandbox); otherwise a
    fresh tmpfs with the system directories and ``binds``.
    """

    binds: list[Bind] = field(default_factory=list)
    scratch: str = ""
    rootfs: str | None = None
    network: bool = True
    loopback_ports: list[int] = field(default_factory=list)  # host loopback TCP ports (a registry)
    cwd: str = "/"

    # A plain dataclass, not a Pydantic model: a connect session imports this module,
    # and a model class costs it 0.1 s to start (BuildRequest embeds it all the same).
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JailSpec:
        data = json.loads(text)
        return cls(**{**data, "binds": [Bind(**b) for b in data.get("binds", [])]})


# --- outside: start the job in its namespaces ------------------------------------------


def namespace_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as root of fresh user, mount, PID, IPC, UTS and network namespaces."""
    user = ["--map-root-user", "--map-auto"] if os.geteuid() != 0 else []
    return ["unshare", *user, "--mount", "--pid", "--ipc", "--uts", "--net", "--fork",
            "--kill-child", "--", *argv]


def clean_env(**extra: str) -> dict[str, str]:
    """The whole environment a jail starts with: the tools' path and locale and a
    site's proxy, none of the service's own (say, a database URL with its password)."""
    kept = {k: v for k, v in os.environ.items() if k in ENV_KEPT}
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", **kept, **extra}


def check_host(spec: JailSpec) -> None:
    """One line for what this node lacks to run a jail, before anything starts."""
    for tool in ("unshare", *(("pasta",) if spec.network else ())):
        if shutil.which(tool) is None:
            package = "passt" if tool == "pasta" else "util-linux"
            raise UserError(f"{tool} not found: install {package} on the build node")
    if spec.network and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        raise UserError("/dev/net/tun is not usable by this account: as distributions do, "
                        "make it mode 0666 (chmod 0666 /dev/net/tun), or turn builds' "
                        "network off")


def start(module: str, args: Sequence[str], spec: JailSpec, **popen) -> subprocess.Popen:
    """Start ``python -m module args…`` jailed, its network attached; the ``unshare`` process.

    ``module`` calls :func:`handshake` on its arguments, then :func:`enter`: it
    waits on a pipe until ``pasta`` has set up its network.
    """
    check_host(spec)
    popen.setdefault("env", clean_env())
    to_job, from_outside = os.pipe()
    from_job, to_outside = os.pipe()
    # Isolated (-I): neither the working directory nor a user site joins sys.path, so
    # neither is bound in by python_dirs().
    argv = [sys.executable, "-I", "-m", module, "--jail-fds", f"{to_job},{to_outside}",
            *args]
    proc = subprocess.Popen(namespace_argv(argv), pass_fds=(to_job, to_outside), **popen)
    os.close(to_job)
    os.close(to_outside)
    try:
        if os.read(from_job, 1) != READY:
            raise UserError("the jail did not start (see the log above)")
        if spec.network:
            end_with(proc, attach_network(proc.pid, spec.loopback_ports))
        os.write(from_outside, GO)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(from_job)
        os.close(from_outside)
    return proc


def attach_network(pid: int, loopback_ports: Sequence[int] = ()) -> subprocess.Popen:
    """User-mode networking for the namespaces of ``pid``: pasta, host loopback off.

    By default pasta forwards the host's loopback ports into the namespace; these
    flags turn every forward and the gateway mapping off, but for the TCP ports a
    site names (a registry on the build node's loopback).  pasta stays a child of
    ours (ended with the job, or with us) and writes its PID file once the
    namespace's network is up.
    """
    if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        raise UserError(f"process {pid} is not in a network namespace of its own")
    forward = ",".join(str(p) for p in loopback_ports) or "none"
    with tempfile.TemporaryDirectory(prefix="hpcstack-pasta-") as tmp, \
            open(Path(tmp) / "stderr", "w+b") as errors:  # a file: a pipe could fill up
        ready = Path(tmp) / "pid"
        pasta = subprocess.Popen(["pasta", *PASTA_FLAGS, "-T", forward, "--foreground",
                                  "--pid", str(ready), str(pid)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=errors,
                                 preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        deadline = time.monotonic() + PASTA_START_S
        while not ready.exists():
            if pasta.poll() is not None or time.monotonic() > deadline:
                pasta.kill()
                pasta.wait()
                errors.seek(0)
                why = errors.read().decode(errors="replace").strip().splitlines()
                raise UserError("pasta could not give the job its network: "
                                + (why[-1] if why else f"exit status {pasta.returncode}"))
            time.sleep(0.002)
    return pasta


def end_with(proc: subprocess.Popen, helper: subprocess.Popen) -> None:
    """End ``helper`` (pasta) once ``proc`` (the jail) has ended."""
    def watch() -> None:
        proc.wait()
        helper.kill()  # pasta whose namespace is gone may ignore SIGTERM
        helper.wait()

    threading.Thread(target=watch, name="jail-network", daemon=True).start()


def handshake(argv: list[str]) -> list[str]:
    """Inside: take ``--jail-fds R,W`` off the front of ``argv``, say ready, wait for go."""
    if argv[:1] != ["--jail-fds"]:
        return argv
    read_fd, write_fd = (int(x) for x in argv[1].split(","))
    os.write(write_fd, READY)
    os.close(write_fd)
    go = os.read(read_fd, 1)
    os.close(read_fd)
    if go != GO:
        sys.exit(1)  # the outside gave up (and kills us)
    return argv[2:]


# --- inside: build the root and pivot into it ------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "riscv64": 41}


def _mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
           data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` of ``mount_setattr(2)``."""

    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux 5.12+)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1


def set_read_only(path: str, read_only: bool, *, recursive: bool) -> bool:
    """Flip the read-only flag of the mount at ``path`` (and every mount below it).

    Unlike a remount this keeps the flags a user namespace may not clear
    (``nosuid``, ``nodev`` of the host's mounts).
    """
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY if read_only else 0,
                     attr_clr=0 if read_only else MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    return libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), flags,
                        ctypes.byref(attr), ctypes.sizeof(attr)) == 0


def _target(root: str, path: str, like: str) -> str:
    """``path`` under ``root``, created as a directory or a file like ``like``."""
    target = root + path
    if os.path.isdir(like):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            Path(target).touch()
    return target


def bind(src: str, root: str, path: str, *, writable: bool) -> None:
    """``src`` (with the mounts below it) at ``root/path``; read-only unless ``writable``."""
    target = _target(root, path, src)
    _mount(src, target, None, MS_BIND | MS_REC)
    if not writable and not set_read_only(target, True, recursive=True):
        raise OSError(ctypes.get_errno(), f"{path}: cannot make it read-only")


def system_tree(root: str) -> None:
    """``/usr`` (and merged-``/usr`` links), the Python running us, the allowed ``/etc``."""
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            bind(path, root, path, writable=False)
    for path in python_dirs():
        bind(path, root, path, writable=False)
    os.makedirs(f"{root}/etc", exist_ok=True)
    for name in ETC_ALLOWED:
        host = f"/etc/{name}"
        if not os.path.exists(host):
            continue
        if os.path.islink(host) and os.path.realpath(host).startswith("/usr/"):
            os.symlink(os.readlink(host), f"{root}{host}")  # e.g. os-release, localtime
        else:
            bind(os.path.realpath(host), root, host, writable=False)


def python_dirs() -> list[str]:
    """Directories outside ``/usr`` that the running Python imports from (run with ``-I``,
    so not the working directory)."""
    dirs = {os.path.realpath(p) for p in (sys.prefix, *sys.path) if p and os.path.isdir(p)}
    outside = sorted(d for d in dirs if not d.startswith("/usr/") and d != "/")
    return [d for d in outside if not any(d.startswith(o + "/") for o in outside)]


def devices(root: str) -> None:
    """A ``/dev`` of the host's harmless nodes (no ``mknod`` in a user namespace)."""
    dev = f"{root}/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name in HOST_DEVICES:
        if os.path.exists(f"/dev/{name}"):
            Path(f"{dev}/{name}").touch()
            _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for sub in ("pts", "shm", "mqueue"):
        os.makedirs(f"{dev}/{sub}")
    _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620")
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    with contextlib.suppress(OSError):  # our own IPC namespace's message queues
        _mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"),
                         ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def kernel_trees(root: str) -> None:
    """``/proc`` of the jail's PID namespace, ``/sys`` of its network namespace."""
    os.makedirs(f"{root}/proc", exist_ok=True)
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{root}/sys", exist_ok=True)
    with contextlib.suppress(OSError):  # a user namespace owning its netns may; else none
        _mount("sysfs", f"{root}/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)


def private_tmp(root: str, *paths: str) -> None:
    for path in paths:
        target = root + path
        if os.path.islink(target):
            continue
        os.makedirs(target, exist_ok=True)
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def in_root(rootfs: str, path: str) -> str:
    """``path`` inside ``rootfs``, resolving symlinks as if ``rootfs`` were ``/``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(rootfs, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise UserError(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(rootfs, *resolved)


def resolver(root: str) -> None:
    """The host's resolver and hosts file in an image root (``connect`` sessions)."""
    for name in ("resolv.conf", "hosts"):
        host = os.path.realpath(f"/etc/{name}")
        target = in_root(root, f"/etc/{name}")
        if os.path.isfile(host) and not os.path.isdir(target):
            rel = target[len(root):]
            bind(host, root, rel, writable=False)


def pivot(root: str) -> None:
    """Make ``root`` the root of this mount namespace and drop the host's from it."""
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    os.chdir(root)
    if libc.syscall(number, b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    if libc.umount2(b".", MNT_DETACH) != 0:  # the old root, stacked on the new one
        raise OSError(ctypes.get_errno(), "umount of the old root")
    os.chdir("/")


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def bring_up_loopback() -> None:
    """The jail's own ``lo`` up (pasta does this when there is a network)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000


def _identity_map(kind: str) -> str:
    """This user namespace's IDs mapped one to one, extent by extent.

    (Each extent of a child's map must lie within one extent of its parent's.)
    """
    with open(f"/proc/self/{kind}_map") as fh:
        extents = [line.split() for line in fh if line.strip()]
    return "".join(f"{inside} {inside} {count}\n" for inside, _, count in extents)


def lock_mounts() -> None:
    """Go on in a nested user namespace, in which every mount of the jail is locked.

    Mounts made by a user namespace's root may be remounted by it: a read-only
    bind would not stay read-only against the job's fake root.  Mounts copied into
    a mount namespace of a *child* user namespace are locked — neither made
    writable again nor unmounted to show what lies below.  The IDs map one to one,
    so files keep their owners.  This process stays behind as the namespace's
    init: it reaps, forwards SIGTERM and SIGHUP, and exits with the job's status.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.close(go_w)
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            os._exit(126)
        os.write(ready_w, READY)
        if os.read(go_r, 1) != GO:
            os._exit(126)
        os.close(ready_w)
        os.close(go_r)
        return
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) != READY:
        os._exit(126)
    for kind in ("uid", "gid"):
        with open(f"/proc/{child}/{kind}_map", "w") as fh:
            fh.write(_identity_map(kind))
    os.write(go_w, GO)
    _reap_until(child)


def _reap_until(child: int) -> None:
    """As init: forward the signals that end a job, reap everything, exit as ``child``."""
    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    for sig in (signal.SIGINT, signal.SIGQUIT):  # the terminal's: for the job, not us
        signal.signal(sig, lambda *_: None)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status)
                     else 128 + os.WTERMSIG(status))


def enter(spec: JailSpec) -> None:
    """As PID 1 of the new namespaces: build the jail's root and pivot into it."""
    if not spec.network:
        bring_up_loopback()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if spec.rootfs:
        root = os.path.realpath(spec.rootfs)
        _mount(root, root, None, MS_BIND | MS_REC)  # pivot_root wants a mount point
        resolver(root)
    else:
        root = spec.scratch
        os.makedirs(root, exist_ok=True)
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        system_tree(root)
        for b in spec.binds:
            bind(b.path, root, b.path, writable=b.writable)
        private_tmp(root, "/tmp", "/var/tmp", "/run")
        os.makedirs(f"{root}/root", mode=0o700, exist_ok=True)
    devices(root)
    kernel_trees(root)
    pivot(root)
    if not spec.rootfs:
        set_read_only("/", True, recursive=False)  # the skeleton itself stays as built
    lock_mounts()
    os.chdir(spec.cwd)


def main(argv: list[str]) -> int:
    """``python -m hpcstack.build.jail SPEC_JSON -- CMD…``: run one command in a jail.

    What a build would see, for an admin to look at (and for the tests)::

        python -m hpcstack.build.jail '{"binds": [{"path": "/srv/x"}]}' -- ls /srv
    """
    if argv[:1] != ["--jail-fds"]:
        spec = JailSpec.from_json(argv[0])
        proc = start("hpcstack.build.jail", argv, spec)
        return proc.wait()
    argv = handshake(argv)
    spec = JailSpec.from_json(argv[0])
    command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    if not spec.rootfs and not spec.scratch:
        spec.scratch = "/tmp"  # mounted over only in this mount namespace
    enter(spec)
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
