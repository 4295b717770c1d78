"""Packing a built root filesystem's SquashFS into a SIF, with ``siftool``.

The SIF holds what Apptainer's own assembler writes: the definition file, the
inspect metadata as a JSON object named ``inspect-metadata.json``, and the SquashFS
as the primary system partition with its architecture; and the launch script
``#!/usr/bin/env run-singularity`` that makes the file executable.  Every data
object is in object group 1, as Apptainer puts them: ``apptainer sign`` and
``verify`` (and ``hpcstack sign``) sign and check an image group by group.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
METADATA_NAME = "inspect-metadata.json"  # what `apptainer inspect` reads
LAUNCH_SCRIPT_SIZE = 32  # the fixed field at the start of the SIF global header

# siftool's --partarch numbers
SIF_ARCH = {"i386": 1, "amd64": 2, "arm": 3, "arm64": 4, "ppc64": 5, "ppc64le": 6,
            "mips": 7, "mipsle": 8, "mips64": 9, "mips64le": 10, "s390x": 11, "riscv64": 12}
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "armv7l": "arm",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


#: The object group every data object joins (Apptainer's default group).
GROUP = "1"

# zstd level 3 in 256 KiB blocks packs hello.def's 125 MiB tree in 0.53 s on 2 CPUs
# (level 6 in the default 128 KiB: 0.82 s) into 44.0 MiB (level 6: 43.9), under
# Apptainer's gzip (44.6 MiB in 6.8 s). Bigger blocks compress better; 256 KiB keeps a
# small file's read to one short block (1 MiB would give 41.3 MiB).
ZSTD_LEVEL = 3
ZSTD_BLOCK = "256K"


def mksquashfs_flags(compression: str) -> list[str]:
    """Compression flags for ``mksquashfs`` (the same for the builtin and Apptainer engines)."""
    if compression == "zstd":
        return ["-comp", "zstd", "-Xcompression-level", str(ZSTD_LEVEL), "-b", ZSTD_BLOCK]
    return ["-comp", compression]


def host_arch() -> str:
    """The host's architecture in SIF's (Go's) spelling."""
    return GO_ARCH.get(platform.machine(), platform.machine())


def sif_argvs(sif: Path, deffile: Path, metadata: Path, squashfs: Path, arch: str
              ) -> list[list[str]]:
    """The ``siftool`` calls that assemble the SIF, in order."""
    return [
        ["siftool", "new", str(sif)],
        ["siftool", "add", "--groupid", GROUP, "--datatype", "1", str(sif), str(deffile)],
        ["siftool", "add", "--groupid", GROUP, "--datatype", "6", "--filename", METADATA_NAME,
         str(sif), str(metadata)],
        ["siftool", "add", "--groupid", GROUP, "--datatype", "4", "--parttype", "2",
         "--partfs", "1", "--partarch", str(SIF_ARCH[arch]), str(sif), str(squashfs)],
    ]


def write_launch_script(sif: Path) -> None:
    with sif.open("r+b") as fh:
        fh.write(LAUNCH_SCRIPT.ljust(LAUNCH_SCRIPT_SIZE, b"\0"))
    os.chmod(sif, 0o755)


def assemble(sif: Path, deffile: Path, metadata: Path, squashfs: Path, arch: str,
             run: Callable[[Sequence[str]], object]) -> None:
    for argv in sif_argvs(sif, deffile, metadata, squashfs, arch):
        run(argv)
    write_launch_script(sif)
