"""Add a signature object to a SIF file in place, as sylabs/sif's ``AddObject`` does.

``siftool add`` cannot link an object to a *group* (only to an object), so the
signature object is written here: its data after the last object's end, its
record in the first free descriptor slot (ID = slot + 1), then the header's
free count, data size and modification time.  That order keeps the file
readable if the write is interrupted: data past the recorded end is ignored,
and the header is written last.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.runtime.sif import DESCRIPTOR as _RECORD
from hpcstack.runtime.sif import GROUP_FLAG as _GROUP_FLAG
from hpcstack.runtime.sif import HEADER as _HEADER
from hpcstack.runtime.sif import DataType, read_sif

_NO_GROUP = _GROUP_FLAG  # sylabs/sif's "no group": the flag with group 0


def add_signature(path: Path, data: bytes, group: int, hash_type: int,
                  fingerprint: bytes) -> int:
    """Append ``data`` as a signature of object ``group``; the new object's ID."""
    img = read_sif(path)
    h = list(_HEADER.unpack(img.raw_header))
    free, total, table_at, data_at = h[7], h[8], h[9], h[11]
    with path.open("r+b") as f:
        f.seek(table_at)
        table = f.read(total * _RECORD.size)
        slot = next((i for i in range(total) if not table[i * _RECORD.size + 4]), None)
        if slot is None or free <= 0:
            raise UserError(f"{path}: no free descriptor left in the SIF image for a signature")
        end = max([data_at, *(d.offset + d.size for d in img.descriptors)])
        now = int(time.time())
        extra = struct.pack("<i20s", hash_type, fingerprint).ljust(384, b"\0")
        record = _RECORD.pack(DataType.SIGNATURE, 1, slot + 1, _NO_GROUP, group | _GROUP_FLAG,
                              end, len(data), len(data), now, now, 0, 0, b"".ljust(128, b"\0"),
                              extra)
        f.seek(end)
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
        f.seek(table_at + slot * _RECORD.size)
        f.write(record)
        h[6], h[7], h[12] = now, free - 1, end + len(data) - data_at
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        f.write(_HEADER.pack(*h))
    return slot + 1
