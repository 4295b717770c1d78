"""The OCI half of the catalog's I/O: ``buildah`` builds, the site registry, ``skopeo`` reads.

``buildah`` runs as whoever runs ``catalog build`` (rootless with the
account's subordinate IDs, or root), in a store of hpcstack's own under the
cache directory (``oci/storage``, overlay by default, so a user's own buildah
store and its driver are never touched).  Images are built in Docker format:
the OCI format drops ``SHELL``, and the recipes' ``RUN`` lines rely on
``pipefail``.  Every failure of a tool is one :class:`UserError` line that
carries the tool's own last words (a registry's refusal, say).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcstack.build.cache import cache_root
from hpcstack.errors import UserError
from hpcstack.files import write_atomic

#: Local names of what the catalog builds (never pushed under this name).
LOCAL = "localhost/hpcstack-catalog"
#: skopeo/buildah words for "that tag or repository is not there".
MISSING = ("manifest unknown", "name unknown", "not found", "404")


@dataclass(frozen=True)
class Registry:
    """How to reach the site registry: its CA (a directory of ``*.crt``) and TLS checks."""

    cert_dir: str | None = None
    tls_verify: bool = True

    def flags(self, prefix: str = "") -> list[str]:
        out = [f"--{prefix}tls-verify={'true' if self.tls_verify else 'false'}"]
        return [*out, f"--{prefix}cert-dir={self.cert_dir}"] if self.cert_dir else out


@dataclass(frozen=True)
class Store:
    """buildah's storage for catalog builds."""

    root: Path
    driver: str = "overlay"

    @classmethod
    def default(cls, driver: str = "overlay") -> Store:
        return cls(cache_root() / "oci" / driver, driver)

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.root / "storage"), "--runroot",
                str(self.root / "run"), "--storage-driver", self.driver, *args]


def last_words(text: str) -> str:
    """The last non-empty line a tool wrote (its error), without buildah's ``Error:``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("Error: ") if lines else "no message"


def _run(argv: Sequence[str], what: str, timeout: float = 3600) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"{what}: {argv[0]} is not installed (apt-get install {argv[0]})"
                        ) from None
    if proc.returncode != 0:
        raise UserError(f"{what}: {last_words(proc.stderr or proc.stdout)}")
    return proc.stdout


def repository(ref: str) -> str:
    """``host/path/name:tag`` -> ``host/path/name`` (a digest goes after this)."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def pinned(ref: str, digest: str) -> str:
    return f"{repository(ref)}@{digest}"


def remote_digest(ref: str, registry: Registry) -> str | None:
    """The manifest digest ``ref`` has in its registry, or None when it is not there."""
    argv = ["skopeo", "inspect", "--raw", *registry.flags(), f"docker://{ref}"]
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    if proc.returncode == 0:
        return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    message = proc.stderr.decode(errors="replace")
    if any(word in message.lower() for word in MISSING):
        return None
    raise UserError(f"{ref}: {last_words(message)}")


def remote_size(ref: str, registry: Registry) -> int:
    """Bytes a pushed image takes in the registry: its config and (compressed) layers."""
    out = _run(["skopeo", "inspect", "--raw", *registry.flags(), f"docker://{ref}"], ref, 300)
    manifest = json.loads(out)
    parts = [manifest.get("config", {}), *manifest.get("layers", [])]
    return sum(int(p.get("size", 0)) for p in parts)


def remote_labels(ref: str, registry: Registry) -> dict[str, str]:
    """The labels of a pushed image (its config's ``Labels``)."""
    out = _run(["skopeo", "inspect", *registry.flags(), f"docker://{ref}"], ref, 300)
    return json.loads(out).get("Labels") or {}


def build(store: Store, dockerfile: Path, local: str, registry: Registry) -> None:
    """``buildah build`` one Dockerfile (its ``FROM`` pulled from the registry as needed)."""
    argv = store.argv("build", "--format", "docker", "--layers", "--pull=missing",
                      *registry.flags(), "--quiet", "-f", str(dockerfile), "-t", local,
                      str(dockerfile.parent))
    _run(argv, f"{dockerfile.name}: buildah build")


def push(store: Store, local: str, ref: str, registry: Registry, workdir: Path) -> str:
    """Push to ``ref``; the digest the registry stored it under."""
    digestfile = workdir / f".{hashlib.sha256(ref.encode()).hexdigest()[:16]}.digest"
    digestfile.unlink(missing_ok=True)
    try:
        _run(store.argv("push", *registry.flags(), "--quiet", "--digestfile",
                        str(digestfile), local, f"docker://{ref}"),
             f"push to {ref} failed")
        return digestfile.read_text().strip()
    finally:
        digestfile.unlink(missing_ok=True)


def has_local(store: Store, name: str) -> bool:
    proc = subprocess.run(store.argv("inspect", "--type", "image", name), capture_output=True)
    return proc.returncode == 0


def debian_root(store: Store, suite: str, mirrors: Sequence[str], workdir: Path,
                quiet: bool = True) -> str:
    """A minbase Debian as a local image, made once with mmdebstrap (the host's apt sources).

    It stands in for Docker Hub's ``debian:SUITE-slim`` where the registry has
    none: the same tree ``Bootstrap: debootstrap`` starts from.
    """
    key = hashlib.sha256(json.dumps([suite, list(mirrors)]).encode()).hexdigest()[:12]
    name = f"{LOCAL}-root/debian:{suite}-slim-{key}"
    if has_local(store, name):
        return name
    work = workdir / f"root-{suite}"
    work.mkdir(parents=True, exist_ok=True)
    tar = work / "rootfs.tar"
    # As an ordinary user mmdebstrap works in a temporary root that its subordinate root
    # must enter: not under $TMPDIR when that lies in a private home (0700, as Debian 13
    # makes homes), but in /var/tmp. The tarball itself is written as the user.
    _run(["env", "TMPDIR=/var/tmp", "mmdebstrap", "--variant=minbase", "--format=tar",
          *(["--quiet"] if quiet else []), suite, str(tar), *mirrors], f"mmdebstrap {suite}")
    write_atomic(work / "Dockerfile", 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n')
    try:
        build(store, work / "Dockerfile", name, Registry())
    finally:
        tar.unlink(missing_ok=True)
    return name
