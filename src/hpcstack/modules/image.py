"""Reading images at deploy time (I/O): checksum, labels, ``%help``, executables.

A SIF is read without extracting it: labels from its JSON descriptor, files
through ``unsquashfs -lls`` / ``-cat`` at the SquashFS partition's offset.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.files import sha256_file
from hpcstack.modules.render import META_EXEC, ImageFacts
from hpcstack.runtime.cache import locate
from hpcstack.runtime.sif import is_sif, read_sif

HELP = ".singularity.d/runscript.help"


def tree_digest(root: Path) -> str:
    """A checksum of a directory tree: every path, type, mode, link target and content."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(
                os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            elif os.access(path, os.R_OK):
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
            digest.update(b"\0")
        for name in dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            digest.update(f"{rel}/\0{st.st_mode:o}\0".encode())
    return digest.hexdigest()


def inspect(image: Path, *, listing: bool, checksum: str | None = None) -> ImageFacts:
    """What deploy needs to know about a SIF; ``listing`` also lists its executables."""
    if not image.exists():
        raise UserError(f"{image}: image not found")
    if not image.is_file() or not is_sif(image):
        raise UserError(f"{image}: not a SIF image")
    sif = read_sif(image)
    labels = {str(k): str(v) for k, v in (sif.labels() or {}).items()}
    squash = locate(image)
    paths = _listing(squash.path, squash.offset)
    help_text = None
    if "/" + HELP in paths:
        help_text = _cat(squash.path, squash.offset, HELP).strip("\n") or None
    executables = tuple(sorted(p for p, exe in paths.items() if exe)) if listing else ()
    return ImageFacts(
        source=str(image),
        sha256=checksum or sha256_file(image),
        labels=labels,
        help=help_text,
        has_exec_action=META_EXEC in paths,
        executables=executables,
    )


def _run(argv: list[str], image: Path) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              errors="replace")
    except FileNotFoundError:
        raise UserError("unsquashfs: not found (install squashfs-tools)") from None
    if proc.returncode not in (0, 2):
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"{image}: cannot read its SquashFS partition ({last})")
    return proc.stdout


def _listing(path: Path, offset: int) -> dict[str, bool]:
    """Every path in the image, and whether it is an executable file or a symlink."""
    out = _run(["unsquashfs", "-n", "-lls", "-o", str(offset), "-d", "/x", str(path)], path)
    paths: dict[str, bool] = {}
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or len(parts[0]) != 10:
            continue
        mode, rest = parts[0], parts[5]
        name = rest.split(" -> ", 1)[0] if mode[0] == "l" else rest
        if not name.startswith("/x"):
            continue
        name = name[2:] or "/"
        paths[name] = mode[0] == "l" or (mode[0] == "-" and "x" in mode[1:])
    return paths


def _cat(path: Path, offset: int, member: str) -> str:
    return _run(["unsquashfs", "-n", "-o", str(offset), "-cat", str(path), member], path)


def labels_json(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / ".singularity.d" / "labels.json").read_text())
    except (OSError, ValueError):
        return {}
