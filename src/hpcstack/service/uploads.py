"""Receiving a ``defcreate`` upload: the multipart body parsed as it streams.

Each file part goes straight to a staging directory under the service's data
directory as its bytes arrive, and the body is counted as it arrives: once it
passes ``--max-upload`` the upload is refused at once, so no more than the limit
ever reaches the disk.  Form fields (``name``, ``paths``) are small and kept in
memory, each bounded.  Nothing here decides whether the upload is acceptable
beyond its size and shape; the caller checks the fields, then moves the staging
directory into place.

The body's fields: ``name`` (text), ``definition`` (a file), ``files`` (files,
repeated) and ``paths`` (text, repeated, one per file, in the same order).
Other fields are read and dropped, as a form parser would.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PARTS = 10_000  # parts in one body: each file part is a file on disk
MAX_FIELD_BYTES = 4096  # one text field (name, a path)
MAX_HEADER_BYTES = 16 << 10  # the headers of one part
FILE_FIELDS = ("definition", "files")
TEXT_FIELDS = ("name", "paths")


class UploadError(Exception):
    """The body is refused: HTTP ``status`` with a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class StagedFile:
    """A file part as it landed in staging: the name the client gave it, where, how big."""

    filename: str | None
    path: Path
    size: int = 0


@dataclass
class Received:
    """What a body held, before anything about it was checked."""

    name: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    definition: list[StagedFile] = field(default_factory=list)
    files: list[StagedFile] = field(default_factory=list)
    body_bytes: int = 0

    @property
    def file_bytes(self) -> int:
        return sum(f.size for f in (*self.definition, *self.files))


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary from a ``Content-Type`` header; UploadError when there is none."""
    kind, params = parse_options_header((content_type or "").encode("latin-1", "replace"))
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(422, "body: expected multipart/form-data with a boundary")
    return boundary


def too_large(size: int | str, limit: int) -> UploadError:
    return UploadError(413, f"upload of {size} bytes is over the limit of {limit} bytes")


class _Parts:
    """The parser's callbacks: file parts written to ``staging/parts``, text kept."""

    def __init__(self, staging: Path, into: Received) -> None:
        self.dir = staging / "parts"
        self.dir.mkdir()
        self.got = into
        self.count = 0
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._header_bytes = 0
        self._text: bytearray | None = None
        self._text_field = ""
        self._file: BinaryIO | None = None
        self._staged: StagedFile | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self.count += 1
        if self.count > MAX_PARTS:
            raise UploadError(413, f"upload of more than {MAX_PARTS} parts")
        self._disposition, self._header_bytes = None, 0
        self._header_field.clear()
        self._header_value.clear()

    def _header(self, data: bytes, start: int, end: int, into: bytearray) -> None:
        self._header_bytes += end - start
        if self._header_bytes > MAX_HEADER_BYTES:
            raise UploadError(400, f"body: part headers over {MAX_HEADER_BYTES} bytes")
        into += data[start:end]

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header(data, start, end, self._header_field)

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header(data, start, end, self._header_value)

    def header_end(self) -> None:
        if bytes(self._header_field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def headers_finished(self) -> None:
        kind, params = parse_options_header(self._disposition or b"")
        if kind != b"form-data" or b"name" not in params:
            raise UploadError(400, "body: a part without Content-Disposition: form-data; "
                              "name=...")
        name = params[b"name"].decode("latin-1")
        raw_filename = params.get(b"filename")
        self._text = None
        self._staged = None
        if name in FILE_FIELDS:
            filename = None
            if raw_filename is not None:
                try:
                    filename = raw_filename.decode()
                except UnicodeDecodeError:
                    raise UploadError(422, f"{name}: the file name is not UTF-8") from None
            self._staged = StagedFile(filename, self.dir / str(self.count))
            # Unbuffered: what the parser hands over is on disk, and counted, at once.
            self._file = self._staged.path.open("xb", buffering=0)
            (self.got.definition if name == "definition" else self.got.files).append(
                self._staged)
        elif name in TEXT_FIELDS:
            self._text, self._text_field = bytearray(), name

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None and self._staged is not None:
            view = memoryview(data)[start:end]
            while view:  # a raw write may take less than it was given
                view = view[self._file.write(view) or 0:]
            self._staged.size += end - start
        elif self._text is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise UploadError(422, f"{self._text_field}: over {MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._text is not None:
            try:
                value = self._text.decode()
            except UnicodeDecodeError:
                raise UploadError(422, f"{self._text_field}: not UTF-8 text") from None
            (self.got.name if self._text_field == "name" else self.got.paths).append(value)
            self._text = None

    def end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive(chunks: AsyncIterator[bytes], content_type: str | None, staging: Path,
                  limit: int) -> Received:
    """Parse the body from ``chunks`` into ``staging`` (an empty directory).

    Raises UploadError (413 as soon as the body passes ``limit`` bytes, before the chunk
    that passes it is written; 400/422 for a malformed body).  The caller removes
    ``staging`` whatever happens.
    """
    got = Received()
    parts = _Parts(staging, got)
    parser = MultipartParser(boundary_of(content_type), parts.callbacks())
    try:
        async for chunk in chunks:
            got.body_bytes += len(chunk)
            if got.body_bytes > limit:
                raise too_large(f"more than {limit}", limit)
            if chunk:  # parse, and write the files, in a thread: the loop serves others
                await asyncio.to_thread(parser.write, chunk)
        parser.finalize()
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UploadError(507, "upload: no space left on the build service") from None
        raise
    except MultipartParseError as err:
        raise UploadError(400, f"body: malformed multipart data: "
                          f"{str(err).splitlines()[0] if str(err) else 'parse error'}") from None
    finally:
        parts.close()
    if not parts.ended:
        raise UploadError(400, "body: the multipart data ends before its closing boundary")
    return got


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
