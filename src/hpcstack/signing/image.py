"""Sign a SIF image, or verify its signatures against trusted keys: one line on failure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcstack.errors import UserError
from hpcstack.runtime.sif import SifImage, read_sif
from hpcstack.signing import integrity, sifwrite
from hpcstack.signing.pgp import BadSignature, Keyring, SigningKey, UnknownKey


@dataclass(frozen=True)
class SignResult:
    image: str
    fingerprint: str
    user: str
    signatures: list[int]  # the new signature objects' IDs, one per object group


@dataclass(frozen=True)
class GroupCheck:
    group: int
    objects: list[int]
    fingerprint: str
    user: str


@dataclass(frozen=True)
class VerifyResult:
    image: str
    groups: list[GroupCheck]

    @property
    def signers(self) -> list[str]:
        return sorted({f"{g.user} ({g.fingerprint})" for g in self.groups})


def sign_image(path: Path, key: SigningKey) -> SignResult:
    """Sign every object group of the image at ``path`` with ``key``, in place."""
    img = read_sif(path)
    groups = _groups(img, "cannot sign")
    ids = []
    for group in groups:
        message, hash_name = key.clearsign(integrity.metadata(img, group))
        if hash_name not in integrity.HASH_TYPES:
            raise UserError(f"{key.source}: key signs with {hash_name}, which SIF cannot record")
        try:
            ids.append(sifwrite.add_signature(path, message, group,
                                              integrity.HASH_TYPES[hash_name],
                                              bytes.fromhex(key.fingerprint)))
        except PermissionError:
            raise UserError(f"{path}: cannot write the signature (permission denied)") from None
    return SignResult(image=str(path), fingerprint=key.fingerprint, user=key.user,
                      signatures=ids)


def verify_image(path: Path, keyring: Keyring) -> VerifyResult:
    """Check that each object group carries a good signature by a key in ``keyring``."""
    img = read_sif(path)
    groups = _groups(img, "cannot verify")
    sigs = integrity.signatures(img)
    checks = []
    for group in groups:
        mine = [s for s in sigs if s.group == group]
        if not mine:
            raise UserError(f"{path}: not signed (no signature for object group {group})")
        problems = []
        for sig in mine:
            try:
                checks.append(_check(img, group, sig, keyring))
                break
            except _Refused as why:
                problems.append(str(why))
        else:
            raise UserError(f"{path}: {problems[0]}")
    return VerifyResult(image=str(path), groups=checks)


class _Refused(Exception):
    """This signature cannot vouch for the group (another one still may)."""


def _check(img: SifImage, group: int, sig: integrity.SignatureObject,
           keyring: Keyring) -> GroupCheck:
    data = img.read(sig.descriptor)
    try:
        good = keyring.verify(data)
    except UnknownKey:
        who = sig.fingerprint or "a key without a recorded fingerprint"
        raise _Refused(f"signed by {who}, which is not a trusted key "
                       f"({len(keyring.certs)} in {', '.join(keyring.sources) or 'no keyring'})"
                       ) from None
    except BadSignature as err:
        raise _Refused(f"signature object {sig.descriptor.id} is not valid ({err}): "
                       "the signed metadata was changed") from None
    if sig.fingerprint and sig.fingerprint != good.fingerprint:
        raise _Refused(f"signature object {sig.descriptor.id} names key {sig.fingerprint} "
                       f"but was made by {good.fingerprint}")
    if good.plaintext.startswith(b"SIFHASH:"):
        raise _Refused(f"signature object {sig.descriptor.id} is a legacy signature "
                       "(Singularity 3.5 and older): sign the image again")
    try:
        objects = integrity.check(img, group, good.plaintext)
    except integrity.IntegrityError as err:
        raise UserError(f"{img.path}: {err}") from None  # a trusted signature, broken: tampered
    return GroupCheck(group=group, objects=[d.id for d in objects],
                      fingerprint=good.fingerprint, user=good.user)


def _groups(img: SifImage, what: str) -> list[int]:
    try:
        return integrity.groups(img)
    except integrity.IntegrityError as err:
        raise UserError(f"{img.path}: {what}: {err}") from None
