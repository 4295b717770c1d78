"""What a SIF signature signs: the metadata of one object group (pure but for reading data).

The format is sylabs/sif's ``pkg/integrity`` (what ``apptainer sign`` writes),
version 1: a compact JSON document

    {"version":1,"header":{"digest":"sha256:HEX"},
     "objects":[{"relativeId":0,"descriptorDigest":"sha256:HEX","objectDigest":"sha256:HEX"}]}

- the header digest covers the launch script, magic, version and image ID
  (not the times or counts, which change when a signature is added);
- each object of the group, in ID order, has a digest of its descriptor's
  stable fields (data type, used flag, ID relative to the group's lowest ID,
  link, size, creation time, uid, gid, name, extra; not group, offset or
  modification time) and a digest of its data.

That JSON is clear-signed (OpenPGP) and stored as a signature object that
belongs to no group and links to the group it signs.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

from hpcstack.runtime.sif import DESCRIPTOR as _RECORD
from hpcstack.runtime.sif import GROUP_FLAG as _GROUP_FLAG
from hpcstack.runtime.sif import DataType, Descriptor, SifImage

_STABLE = struct.Struct("<iBIIqqqq")  # the integrity-protected integer fields
_CHUNK = 1 << 20

#: Digest names in the metadata, and the SIF descriptor's hash type codes.
DIGESTS: dict[str, Callable] = {
    "sha224": hashlib.sha224, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
    "sha512": hashlib.sha512, "sha512_224": lambda: hashlib.new("sha512_224"),
    "sha512_256": lambda: hashlib.new("sha512_256"),
}  # fmt: skip
HASH_TYPES = {"SHA256": 1, "SHA384": 2, "SHA512": 3}


class IntegrityError(Exception):
    """The image does not match what its signature says (one line, for the user)."""


@dataclass(frozen=True)
class SignatureObject:
    """A signature data object: the group it signs, its hash type and signer's fingerprint."""

    descriptor: Descriptor
    group: int  # the linked object group (0: linked to a single object, a legacy form)
    hash_type: int
    fingerprint: str  # upper-case hex, "" when absent


def kind(d: Descriptor) -> str:
    """A short name for an object in messages: ``3 (squashfs partition)``."""
    if d.partition is not None:
        return f"{d.id} (partition)"
    name = d.datatype.name.lower().replace("_", " ") if isinstance(d.datatype, DataType) \
        else f"type {d.datatype:#x}"
    return f"{d.id} ({name}{', ' + d.name if d.name else ''})"


def groups(img: SifImage) -> list[int]:
    """The image's object groups, in order; an object outside every group cannot be signed."""
    found = sorted({d.group for d in img.descriptors if d.group})
    for d in img.descriptors:
        if d.group == 0 and d.datatype != DataType.SIGNATURE:
            raise IntegrityError(f"object {kind(d)} is in no object group: images built "
                                 "before hpcstack put objects in group 1 must be rebuilt")
    if not found:
        raise IntegrityError("the image has no object groups to sign")
    return found


def group_objects(img: SifImage, group: int) -> list[Descriptor]:
    return sorted((d for d in img.descriptors if d.group == group), key=lambda d: d.id)


def header_digest(img: SifImage, name: str = "sha256") -> str:
    raw = img.raw_header
    return _digest(name, [raw[0:45] + raw[48:64]])


def descriptor_digest(d: Descriptor, min_id: int, name: str = "sha256") -> str:
    dt, used, oid, _group, link, _off, size, _pad, ctime, _mtime, uid, gid, label, extra = \
        _RECORD.unpack(d.raw)
    stable = _STABLE.pack(dt, used, oid - min_id, link, size, ctime, uid, gid)
    return _digest(name, [stable, label, extra])


def object_digest(img: SifImage, d: Descriptor, name: str = "sha256") -> str:
    h = DIGESTS[name]()
    with img.path.open("rb") as f:
        f.seek(d.offset)
        left = d.size
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise IntegrityError(f"object {kind(d)} is cut short")
            h.update(chunk)
            left -= len(chunk)
    return f"{name}:{h.hexdigest()}"


def metadata(img: SifImage, group: int) -> bytes:
    """The JSON document a signature of ``group`` signs (as Go's encoder writes it)."""
    objects = group_objects(img, group)
    min_id = objects[0].id
    doc = {
        "version": 1,
        "header": {"digest": header_digest(img)},
        "objects": [{"relativeId": d.id - min_id,
                     "descriptorDigest": descriptor_digest(d, min_id),
                     "objectDigest": object_digest(img, d)} for d in objects],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def check(img: SifImage, group: int, payload: bytes) -> list[Descriptor]:
    """The group's objects, after checking each against the signed ``payload``."""
    try:
        doc = json.loads(payload)
        version, header, entries = doc["version"], doc["header"]["digest"], doc["objects"]
        signed = {int(e["relativeId"]): (e["descriptorDigest"], e["objectDigest"])
                  for e in entries}
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("the signed metadata is not sylabs/sif's JSON (a legacy "
                             "signature, or damaged)") from None
    if version != 1:
        raise IntegrityError(f"signed metadata version {version} is not known (1 is)")
    objects = group_objects(img, group)
    min_id = objects[0].id
    if header_digest(img, _name(header)) != header:
        raise IntegrityError("the image header (launch script, magic, version or ID) "
                             "does not match its signature")
    present = {d.id - min_id for d in objects}
    for rel in sorted(set(signed) - present):
        raise IntegrityError(f"object {rel + min_id} is signed but missing from group {group}")
    for d in objects:
        if d.id - min_id not in signed:
            raise IntegrityError(f"object {kind(d)} was added to group {group} after signing")
        want_descr, want_data = signed[d.id - min_id]
        if descriptor_digest(d, min_id, _name(want_descr)) != want_descr:
            raise IntegrityError(f"object {kind(d)}: its descriptor does not match the signature")
        if object_digest(img, d, _name(want_data)) != want_data:
            raise IntegrityError(f"object {kind(d)}: its data does not match the signature "
                                 "(the image was changed after signing)")
    return objects


def signatures(img: SifImage) -> list[SignatureObject]:
    """Every signature object of the image, with the group it links to."""
    found = []
    for d in img.descriptors:
        if d.datatype != DataType.SIGNATURE:
            continue
        fields = _RECORD.unpack(d.raw)
        link, extra = fields[4], fields[13]
        hash_type, entity = struct.unpack_from("<i20s", extra)
        found.append(SignatureObject(
            descriptor=d, group=(link & ~_GROUP_FLAG) if link & _GROUP_FLAG else 0,
            hash_type=hash_type,
            fingerprint="" if not any(entity) else entity.hex().upper()))
    return found


def _name(digest: str) -> str:
    name = digest.split(":", 1)[0]
    if name not in DIGESTS:
        raise IntegrityError(f"signed metadata uses an unknown digest {name!r}")
    return name


def _digest(name: str, parts: list[bytes]) -> str:
    h = DIGESTS[name]()
    for p in parts:
        h.update(p)
    return f"{name}:{h.hexdigest()}"
