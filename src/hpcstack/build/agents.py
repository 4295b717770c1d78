"""Bootstrap agents: where a stage's root filesystem comes from.

Each agent turns a stage's header into a :class:`~hpcstack.build.plan.Source`,
fetching into the build cache when needed.  ``skopeo`` runs as the user;
``mmdebstrap`` as root of a user namespace like the build's own (so the tree
it writes has the owners the build expects, and nothing needs unpacking).

=============  ============================================================
agent          source
=============  ============================================================
debootstrap    ``mmdebstrap --mode=root`` in the build's user namespace, into
               a directory; keyed by suite, mirror, ``Include`` and architecture
docker         ``skopeo copy`` into an OCI layout, keyed by manifest digest;
oci, oci-      also ``oci:``, ``oci-archive:`` and ``docker-archive:`` paths
archive, ...
localimage     a SIF (its SquashFS partition), a SquashFS file or a sandbox
scratch        nothing
=============  ============================================================
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcstack.build import fakeroot, layout
from hpcstack.build.cache import BuildCache, key_of
from hpcstack.build.plan import Source
from hpcstack.deffile import Stage
from hpcstack.errors import UserError

SUPPORTED = ("debootstrap", "docker", "docker-archive", "oci", "oci-archive", "localimage",
             "scratch")
OCI_TRANSPORTS = {"docker": "docker://", "docker-archive": "docker-archive:",
                  "oci": "oci:", "oci-archive": "oci-archive:"}


@dataclass
class Context:
    """What agents need besides the stage: where messages point, the cache, registry options."""

    deffile: str
    cache: BuildCache
    docker_cert_dir: str | None = None
    docker_insecure: bool = False
    quiet: bool = False
    run: object = field(default=None, repr=False)  # Children.run: a child process

    def where(self, stage: Stage) -> str:
        return f"{self.deffile}:{stage.line}"


def debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el",
            "armv7l": "armhf", "i686": "i386"}.get(machine, machine)


# --- debootstrap -----------------------------------------------------------------------


def _deb822_entries(text: str) -> list[tuple[str, list[str], str]]:
    """(uri, suites, components) of each enabled binary deb822 stanza."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append((uri, fields.get("suites", "").split(), fields.get("components", "main")))
    return out


def _one_line_entries(text: str) -> list[tuple[str, list[str], str]]:
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            out.append((words[1], [words[2]], " ".join(words[3:]) or "main"))
    return out


def host_mirrors(sources: Sequence[tuple[str, str]], suite: str) -> list[str]:
    """The host's apt sources re-pointed at ``suite``, as one-line ``deb`` entries.

    ``sources`` holds (file name, text) of ``/etc/apt/sources.list`` and
    ``sources.list.d/*``.  A host suite ``bookworm-updates`` becomes
    ``SUITE-updates``, so a site's local mirror is used for any release.
    """
    lines: list[str] = []
    for name, text in sources:
        entries = _deb822_entries(text) if name.endswith(".sources") else _one_line_entries(text)
        for uri, suites, components in entries:
            for host_suite in suites:
                _, dash, pocket = host_suite.partition("-")
                line = f"deb {uri} {suite}{dash}{pocket} {components}"
                if line not in lines:
                    lines.append(line)
    return lines


def read_host_sources(root: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list")),
             *sorted((root / "sources.list.d").glob("*.sources"))]
    return [(f.name, f.read_text()) for f in files if f.is_file()]


# debootstrap's minbase as Apptainer runs it: Priority: required and apt, less what
# ``--exclude=openssl,udev,debconf-i18n,e2fsprogs`` leaves out.  mmdebstrap's own
# minbase would add those back.
EXCLUDED = ("openssl", "udev", "debconf-i18n", "e2fsprogs")
REQUIRED = f'?and(?priority(required),?not(?name("^({"|".join(EXCLUDED)})$")))'
# Merged /usr by symlinks, as debootstrap makes it, where the suite has usr-is-merged:
# without it apt pulls in the usrmerge package and perl (~2,000 files, ~9 MiB).
MERGED_USR_HOOK = Path("/usr/share/mmdebstrap/hooks/maybe-merged-usr")
VARIANT = "apt+required-excluded"  # part of the cache key


def mmdebstrap_argv(suite: str, target: Path, mirrors: Sequence[str], arch: str,
                    include: Sequence[str], quiet: bool) -> list[str]:
    """mmdebstrap as root of a user namespace like the build's, writing the tree in place.

    No tarball to write and unpack again (~5 s of a ~20 s cold build).  A user
    namespace cannot mount a new sysfs, so the host's ``/sys`` is bound in; and
    apt downloads as this fake root (its ``_apt`` could not enter a private
    home), an option removed from the image again before it is done, with the
    build host's resolver file that mmdebstrap copied in.
    """
    argv = ["mmdebstrap", "--mode=root", "--variant=apt", f"--include={REQUIRED}",
            "--format=directory", f"--architectures={arch}", "--skip=chroot/mount/sys",
            '--aptopt=APT::Sandbox::User "root"',
            '--extract-hook=mount --rbind /sys "$1/sys"',
            '--customize-hook=umount --lazy "$1/sys"',
            '--customize-hook=rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap" '
            '"$1/etc/resolv.conf"']
    if MERGED_USR_HOOK.is_dir():
        argv.append(f"--hook-dir={MERGED_USR_HOOK}")
    if include:
        argv.append("--include=" + ",".join(include))
    if quiet:
        argv.append("--quiet")
    return [*argv, suite, str(target), *mirrors]


def debootstrap(stage: Stage, ctx: Context) -> Source:
    suite = stage.get("OSVersion")
    if not suite:
        raise UserError(f"{ctx.where(stage)}: Bootstrap: debootstrap needs OSVersion "
                        "(e.g. OSVersion: bookworm)")
    mirror = stage.get("MirrorURL")
    mirrors = [mirror] if mirror else host_mirrors(read_host_sources(), suite)
    include = sorted(set(stage.include))
    arch = debian_arch()
    key = key_of({"agent": "debootstrap", "suite": suite, "mirrors": mirrors,
                  "include": include, "arch": arch, "variant": VARIANT,
                  "format": "directory"})
    entry = ctx.cache.lookup("debootstrap", key)
    if entry is None:
        def produce(tmp: Path) -> None:
            argv = mmdebstrap_argv(suite, tmp / "rootfs", mirrors, arch, include, ctx.quiet)
            ctx.run(fakeroot.namespace_argv(argv), what="mmdebstrap",
                    stop_signal=signal.SIGKILL)

        source = f"debootstrap {suite}" + (f" +{','.join(include)}" if include else "")
        entry = ctx.cache.fill("debootstrap", key, source, produce)
    return Source(kind="dir", path=str(entry / "rootfs"), tree=str(entry / "rootfs"))


# --- OCI images ------------------------------------------------------------------------


def _skopeo_tls(ctx: Context, direction: str) -> list[str]:
    flags = []
    if ctx.docker_insecure:
        flags.append(f"--{direction}-tls-verify=false")
    if ctx.docker_cert_dir:
        flags.append(f"--{direction}-cert-dir={ctx.docker_cert_dir}")
    return flags


def _inspect_digest(ref: str, ctx: Context, stage: Stage) -> str:
    argv = ["skopeo", "inspect", "--format", "{{.Digest}}", *_inspect_tls(ctx), ref]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        reason = re.sub(r'^time="[^"]*" level=\w+ msg="?|"$', "", reason)
        raise UserError(f"{ctx.where(stage)}: cannot fetch {ref}: {reason}")
    return proc.stdout.strip()


def _inspect_tls(ctx: Context) -> list[str]:
    flags = []
    if ctx.docker_insecure:
        flags.append("--tls-verify=false")
    if ctx.docker_cert_dir:
        flags.append(f"--cert-dir={ctx.docker_cert_dir}")
    return flags


def oci_config(layout: Path, tag: str) -> dict:
    """The image config (``Env``, ``Entrypoint``, ``Cmd`` …) of ``tag`` in an OCI layout."""
    def blob(digest: str) -> dict:
        algo, _, hexd = digest.partition(":")
        return json.loads((layout / "blobs" / algo / hexd).read_text())

    index = json.loads((layout / "index.json").read_text())
    for m in index.get("manifests", []):
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return blob(blob(m["digest"])["config"]["digest"]).get("config") or {}
    raise UserError(f"{layout}: no image tagged {tag}")


def oci(stage: Stage, ctx: Context) -> Source:
    ref_text = stage.get("From")
    if not ref_text:
        raise UserError(f"{ctx.where(stage)}: Bootstrap: {stage.bootstrap} needs From")
    ref = OCI_TRANSPORTS[stage.bootstrap] + ref_text.removeprefix("docker://")
    if stage.bootstrap == "docker":
        identity = _inspect_digest(ref, ctx, stage)
    else:
        local, colon, tag = ref_text.partition(":")  # PATH[:TAG]
        path = Path(local).resolve()
        if not path.exists():
            raise UserError(f"{ctx.where(stage)}: From: {ref_text}: no such file or directory")
        st = path.stat()
        ref = OCI_TRANSPORTS[stage.bootstrap] + str(path) + colon + tag
        identity = f"{path}:{st.st_mtime_ns}:{st.st_size}"
    key = key_of({"agent": "oci", "image": identity, "ref": ref, "arch": debian_arch()})
    entry = ctx.cache.lookup("oci", key)
    if entry is None:
        def produce(tmp: Path) -> None:
            ctx.run(["skopeo", "copy", "--quiet", *_skopeo_tls(ctx, "src"), ref,
                     f"oci:{tmp / 'layout'}:image"])

        entry = ctx.cache.fill("oci", key, ref, produce)
    config = oci_config(entry / "layout", "image")
    env = layout.docker_env(config.get("Env") or [])
    return Source(kind="oci", path=str(entry / "layout"), ref="image", env=env,
                  tree=str(entry / "rootfs"),
                  runscript=layout.docker_runscript(config.get("Entrypoint"),
                                                          config.get("Cmd")))


# --- local images ----------------------------------------------------------------------


def localimage(stage: Stage, ctx: Context) -> Source:
    from hpcstack.runtime.sif import read_sif

    ref = stage.get("From")
    if not ref:
        raise UserError(f"{ctx.where(stage)}: Bootstrap: localimage needs From")
    path = Path(os.path.expanduser(ref)).resolve()
    if path.is_dir():
        return Source(kind="dir", path=str(path))
    if not path.is_file():
        raise UserError(f"{ctx.where(stage)}: From: {ref}: no such file or directory")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"hsqs":
        return Source(kind="sif", path=str(path), offset=0)
    try:
        part = read_sif(path).primary_partition()
    except UserError as err:
        raise UserError(f"{ctx.where(stage)}: From: {err}") from None
    return Source(kind="sif", path=str(path), offset=part.offset)


def resolve(stage: Stage, ctx: Context) -> Source:
    """The source of ``stage``'s root filesystem, fetched into the cache if needed."""
    agent = stage.bootstrap
    if agent not in SUPPORTED:
        raise UserError(f"{ctx.where(stage)}: Bootstrap: {agent} is not supported here "
                        f"(supported: {', '.join(SUPPORTED)})")
    if agent == "debootstrap":
        return debootstrap(stage, ctx)
    if agent in OCI_TRANSPORTS:
        return oci(stage, ctx)
    if agent == "localimage":
        return localimage(stage, ctx)
    return Source(kind="empty")
