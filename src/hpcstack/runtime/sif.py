"""Read SIF files (Singularity Image Format): global header and descriptor table.

A small pure-Python reader, enough for hpcstack to find an image's primary
SquashFS partition, its definition file and its labels without Apptainer.
Layout (SIF spec version 01, all integers little-endian, no padding):

- global header, 128 bytes at offset 0: launch script (32 bytes), magic
  ``SIF_MAGIC\\0`` (10), spec version ``01\\0`` (3), primary architecture code
  (3, e.g. ``02\\0`` for amd64), image UUID (16), then eight int64: created,
  modified, descriptors free, descriptors total, descriptors offset,
  descriptors size, data offset, data size;
- descriptor table at the descriptors offset: ``descriptors total`` entries of
  585 bytes each: datatype (int32), used (1 byte), id, group id, linked id
  (uint32 each), offset, size, size with padding, created, modified, uid, gid
  (int64 each), name (128 bytes, NUL padded), extra (384 bytes; for a
  partition: fs type int32, partition type int32, arch code 3 bytes).

Only descriptors marked used are objects of the image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

from hpcstack.errors import UserError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on every launch
if TYPE_CHECKING:  # typing is not imported on the launch path
    from typing import Any, BinaryIO

MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"

_HEADER = struct.Struct("<32s10s3s3s16s8q")
_DESCRIPTOR = struct.Struct("<iBIIIqqqqqqq128s384s")
_PARTITION = struct.Struct("<ii3s")
_GROUP_MASK = 0xF0000000
#: The record layouts and the group flag, for code that writes SIF files (``hpcstack.signing``).
HEADER, DESCRIPTOR, GROUP_FLAG = _HEADER, _DESCRIPTOR, _GROUP_MASK
_MAX_DESCRIPTORS = 1 << 16


class DataType(IntEnum):
    """What a data object holds (``Datatype`` in the spec)."""

    DEFFILE = 0x4001
    ENV = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO = 0x4008
    SBOM = 0x4009
    OCI_BLOB = 0x400A
    OCI_ROOT_INDEX = 0x400B


class FsType(IntEnum):
    """File system of a partition."""

    SQUASHFS = 1
    EXT3 = 2
    IMMUTABLE_OBJECTS = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5


class PartType(IntEnum):
    """Role of a partition; Apptainer runs the PRIMARY_SYSTEM one."""

    SYSTEM = 1
    PRIMARY_SYSTEM = 2
    DATA = 3
    OVERLAY = 4


#: Architecture codes in headers and partitions, as Go names them.
ARCHES = {
    "00": "unknown", "01": "386", "02": "amd64", "03": "arm", "04": "arm64",
    "05": "ppc64", "06": "ppc64le", "07": "mips", "08": "mipsle", "09": "mips64",
    "10": "mips64le", "11": "s390x", "12": "riscv64",
}  # fmt: skip


@dataclass(frozen=True)
class Partition:
    """The extra fields of a partition descriptor."""

    fs: FsType | int
    type: PartType | int
    arch: str


@dataclass(frozen=True)
class Descriptor:
    """One data object of the image; ``offset``/``size`` locate its bytes in the file."""

    id: int
    datatype: DataType | int
    name: str
    offset: int
    size: int
    group: int  # 0 when the object belongs to no group
    link: int  # 0 when not linked
    created: datetime
    modified: datetime
    partition: Partition | None = None
    raw: bytes = field(default=b"", repr=False)  # the 585-byte record, for integrity digests


@dataclass(frozen=True)
class SifImage:
    """A SIF file's header and used descriptors; data is read on demand."""

    path: Path
    id: str
    launch_script: str
    version: str
    arch: str
    created: datetime
    modified: datetime
    descriptors: list[Descriptor]
    raw_header: bytes = field(default=b"", repr=False)  # the 128-byte global header

    def primary_partition(self) -> Descriptor:
        """The primary system partition: the root file system Apptainer runs."""
        for d in self.descriptors:
            if d.partition is not None and d.partition.type == PartType.PRIMARY_SYSTEM:
                return d
        raise UserError(f"{self.path}: SIF image has no primary system partition")

    def read(self, descriptor: Descriptor) -> bytes:
        """The bytes of one data object (in memory: meant for definition files and JSON)."""
        with _open(self.path) as f:
            f.seek(descriptor.offset)
            data = f.read(descriptor.size)
        if len(data) != descriptor.size:
            raise UserError(f"{self.path}: truncated SIF image (object {descriptor.id} cut short)")
        return data

    def find(self, datatype: DataType, name: str | None = None) -> Descriptor | None:
        """The first object of ``datatype`` (and ``name`` when given), or None."""
        for d in self.descriptors:
            if d.datatype == datatype and (name is None or d.name == name):
                return d
        return None

    def deffile(self) -> str | None:
        """The definition file the image was built from, when it carries one."""
        d = self.find(DataType.DEFFILE)
        return None if d is None else self.read(d).decode("utf-8", errors="replace")

    def labels(self) -> dict[str, Any]:
        """Labels: from ``inspect-metadata.json`` as Apptainer 1.2+ writes it, else from
        the ``labels.json`` object of older images."""
        d = self.find(DataType.GENERIC_JSON, "inspect-metadata.json")
        if d is not None:
            data = self._json(d)
            labels = data.get("data", {}).get("attributes", {}).get("labels", {})
            return labels if isinstance(labels, dict) else {}
        d = self.find(DataType.GENERIC_JSON, "labels.json")
        return {} if d is None else self._json(d)

    def _json(self, descriptor: Descriptor) -> dict[str, Any]:
        """A generic JSON object that must hold a JSON object; one clear line if not."""
        try:
            import json

            data = json.loads(self.read(descriptor))
        except ValueError as err:
            raise UserError(f"{self.path}: {descriptor.name} in SIF image is not JSON "
                            f"({err})") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.path}: {descriptor.name} in SIF image is not a JSON object")
        return data


def read_sif(path: Path | str) -> SifImage:
    """Read the header and descriptor table of the SIF file at ``path``."""
    path = Path(path)
    with _open(path) as f:
        size = f.seek(0, 2)
        f.seek(0)
        raw = f.read(_HEADER.size)
        if len(raw) < _HEADER.size or raw[32:42] != MAGIC:
            raise UserError(f"{path}: not a SIF image (bad magic)")
        header = _HEADER.unpack(raw)
        table = _read_table(f, path, header, size)
    return _image(path, raw, header, table, size)


def is_sif(path: Path | str) -> bool:
    """Whether ``path`` is a readable file that starts like a SIF image."""
    try:
        with open(path, "rb") as f:
            return f.read(_HEADER.size)[32:42] == MAGIC
    except OSError:
        return False


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise UserError(f"{path}: not a SIF image (a directory)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _read_table(f: BinaryIO, path: Path, header: tuple, size: int) -> bytes:
    version, total, offset, length = header[2], header[8], header[9], header[10]
    if version != VERSION:
        shown = version.rstrip(b"\0").decode("ascii", errors="replace")
        raise UserError(f"{path}: unsupported SIF version {shown!r} (hpcstack reads 01)")
    if not 0 <= total <= _MAX_DESCRIPTORS or length < total * _DESCRIPTOR.size or offset < 0:
        raise UserError(f"{path}: corrupt SIF image (bad descriptor table)")
    end = offset + total * _DESCRIPTOR.size
    if end > size:
        raise UserError(f"{path}: truncated SIF image ({size} bytes, descriptors end at {end})")
    f.seek(offset)
    return f.read(total * _DESCRIPTOR.size)


def _image(path: Path, raw: bytes, header: tuple, table: bytes, size: int) -> SifImage:
    launch, _magic, version, arch, uid, ctime, mtime = header[:7]
    descriptors = []
    for i, fields in enumerate(_DESCRIPTOR.iter_unpack(table)):
        if fields[1]:
            d = _descriptor(fields, table[i * _DESCRIPTOR.size:(i + 1) * _DESCRIPTOR.size])
            if d.offset < 0 or d.size < 0 or d.offset + d.size > size:
                raise UserError(
                    f"{path}: truncated SIF image (object {d.id} ends at {d.offset + d.size},"
                    f" file has {size} bytes)"
                )
            descriptors.append(d)
    return SifImage(
        path=path,
        id=_uuid_text(uid),
        launch_script=_text(launch),
        version=_text(version),
        arch=_arch(arch),
        created=_time(ctime),
        modified=_time(mtime),
        descriptors=descriptors,
        raw_header=raw,
    )


def _descriptor(fields: tuple, raw: bytes) -> Descriptor:
    datatype, _used, oid, group, link, offset, size, _padded, ctime, mtime = fields[:10]
    name, extra = fields[12], fields[13]
    datatype = _enum(DataType, datatype)
    partition = None
    if datatype == DataType.PARTITION:
        fs, ptype, arch = _PARTITION.unpack_from(extra)
        partition = Partition(_enum(FsType, fs), _enum(PartType, ptype), _arch(arch))
    return Descriptor(
        id=oid,
        datatype=datatype,
        name=_text(name),
        offset=offset,
        size=size,
        group=group & ~_GROUP_MASK,
        link=link & ~_GROUP_MASK,
        created=_time(ctime),
        modified=_time(mtime),
        partition=partition,
        raw=raw,
    )


def _enum(kind: type[IntEnum], value: int) -> Any:
    """The enum member for ``value``, or the plain int for codes newer than this reader."""
    try:
        return kind(value)
    except ValueError:
        return value


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _arch(raw: bytes) -> str:
    code = _text(raw)
    return ARCHES.get(code, "unknown")


def _time(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(0, UTC)


def _uuid_text(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw))`` without importing uuid (and platform) on every launch."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
