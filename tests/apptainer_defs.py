"""Definitions as Apptainer needs them, and what tests read back from its images.

Apptainer's debootstrap needs ``MirrorURL:`` where hpcstack defaults to the host's
apt sources; :func:`with_mirror` adds the host's own mirror, so both tools fetch
from the same place.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

from hpcstack.runtime.sif import read_sif

SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@cache
def host_mirror() -> str:
    """The host's Debian mirror (deb822 or one-line sources), as apptainer-sid.sh finds it."""
    files: list[Path] = []
    for src in SOURCES:  # only what apt reads: sources.list, *.list, *.sources
        files += sorted([*src.glob("*.list"), *src.glob("*.sources")]) if src.is_dir() \
            else [src] if src.exists() else []
    for path in files:
        for line in path.read_text().splitlines():
            m = re.match(r"^(?:URIs:|deb(?:\s+\[[^]]*])?)\s+(\S+)", line.strip())
            if m and "debian" in m.group(1) and "security" not in m.group(1):
                return m.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def with_mirror(text: str) -> str:
    """``text`` with ``MirrorURL: <host mirror>`` after its ``OSVersion:`` line."""
    out, n = re.subn(r"(?mi)^(OSVersion:.*)$", rf"\1\nMirrorURL: {host_mirror()}", text, count=1)
    assert n == 1, "no OSVersion line to put MirrorURL after"
    return out


def squashfs_listing(sif: Path, *paths: str) -> list[str]:
    """``unsquashfs -lln`` of ``paths`` in the SIF's system partition, one entry a line."""
    offset = read_sif(sif).primary_partition().offset
    proc = subprocess.run(["unsquashfs", "-lln", "-o", str(offset), str(sif), *paths],
                          capture_output=True, text=True, check=True)
    return [ln for ln in proc.stdout.splitlines() if ln.startswith(("d", "-", "l", "c", "b"))]


def owner_of(sif: Path, path: str) -> str:
    """``UID/GID`` of ``path`` (no leading slash) inside the SIF."""
    line = squashfs_listing(sif, path)[-1]
    return line.split()[1]
