"""``u2cb download``: resumable, with a progress bar, checked against the server's sha256.

The file grows as ``NAME.sif.part`` beside the target (with the sha256 it is
meant to have in ``NAME.sif.part.sha256``); a later run continues it with a
``Range`` request.  Only a complete file with the right checksum is renamed
into place.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hpcstack.client.api import Client, check
from hpcstack.errors import UserError

CHUNK = 1 << 20
HASH_BLOCK = 4 << 20


def download(client: Client, name: str, target: Path, quiet: bool = False) -> dict:
    """Fetch NAME's SIF to ``target``; returns the artifact (name, size, sha256)."""
    art = client.pack(name)
    if target.is_dir():
        target = target / f"{name}.sif"
    part = target.with_name(target.name + ".part")
    meta = target.with_name(target.name + ".part.sha256")
    if part.exists() and (not meta.exists() or meta.read_text().strip() != art["sha256"]
                          or part.stat().st_size > art["size"]):
        part.unlink()  # a different image than the one we started: start over
    meta.write_text(art["sha256"] + "\n")
    have = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    if have:
        with part.open("rb") as fh:  # what we already have, hashed once
            while block := fh.read(CHUNK):
                digest.update(block)
    if have < art["size"]:
        digest = fetch(client, name, part, have, art["size"], quiet, digest)
    if digest.hexdigest() != art["sha256"]:
        part.unlink()
        raise UserError(f"{name}: checksum mismatch after download; run download again")
    os.replace(part, target)
    meta.unlink(missing_ok=True)
    return {**art, "path": str(target)}


def _update(digest, pieces: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    for piece in pieces:  # no join: a copy of every byte costs as much as the write
        digest.update(piece)


def fetch(client: Client, name: str, part: Path, have: int, size: int, quiet: bool,
          digest):
    """Append the rest of the image to ``part``, hashing as it arrives."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    show = not quiet and sys.stderr.isatty()
    with client.stream(f"/containers/{name}/image", headers) as resp:
        check(resp)
        if have and resp.status_code != 206:
            have = 0  # the server ignored the range: take the whole file
            digest = hashlib.sha256()
        with Progress("[progress.description]{task.description}", BarColumn(),
                      DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                      disable=not show, transient=False) as progress, \
                part.open("ab" if have else "wb") as fh:
            task = progress.add_task(f"{name}.sif", total=size, completed=have)
            # Write what arrives as it arrives; hash it in ~4 MiB batches in a second
            # thread meanwhile (hashlib and file writes let go of the GIL).
            with ThreadPoolExecutor(1) as hasher:
                hashing, pieces, held = None, [], 0
                for piece in resp.iter_raw():
                    fh.write(piece)
                    pieces.append(piece)
                    held += len(piece)
                    if held >= HASH_BLOCK:
                        if hashing is not None:
                            hashing.result()
                        hashing = hasher.submit(_update, digest, pieces)
                        progress.update(task, advance=held)
                        pieces, held = [], 0
                if hashing is not None:
                    hashing.result()
                _update(digest, pieces)
                progress.update(task, advance=held)
    return digest
