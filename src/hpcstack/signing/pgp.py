"""OpenPGP keys, clear-signing and verification, through Sequoia-PGP (``pysequoia``).

Why Sequoia: it is a maintained, complete OpenPGP implementation (RFC 4880 and
9580) in Rust with Python bindings that install as a wheel, no daemon and no
keyring state on disk; it clear-signs and verifies with the RSA keys that
``apptainer key newpair`` makes and with EdDSA keys, and reads Apptainer's
binary keyrings (``~/.apptainer/keys/pgp-secret``, ``pgp-public``) as they are.
PGPy is unmaintained since 2022 and python-gnupg/GPGME drive a ``gpg`` agent
with its own home directory, which a service and a batch job would have to
manage.

Key files may be armored or binary and hold one key or a whole keyring; a
directory stands for every regular file in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pysequoia
from pysequoia.packet import Tag

from hpcstack.errors import UserError

#: Where ``passphrase`` looks first; otherwise it asks on the terminal, when there is one.
PASSPHRASE_ENV = "HPCSTACK_SIGN_PASSPHRASE"


def apptainer_keys_dir() -> Path:
    """Apptainer's local keyring directory (``APPTAINER_KEYSDIR`` or ``~/.apptainer/keys``)."""
    env = os.environ.get("APPTAINER_KEYSDIR")
    return Path(env) if env else Path.home() / ".apptainer" / "keys"


@dataclass
class SigningKey:
    """An unlocked secret key: signs; ``fingerprint`` is its primary key's (upper-case hex)."""

    fingerprint: str
    user: str
    source: str
    _signer: pysequoia.PySigner = field(repr=False)

    def clearsign(self, message: bytes) -> tuple[bytes, str]:
        """The clear-signed message and the name of the hash it used (``SHA512``)."""
        try:
            signed = pysequoia.sign(self._signer, message, mode=pysequoia.SignatureMode.CLEAR)
        except Exception as err:  # pysequoia raises RuntimeError with a Rust backtrace
            raise UserError(f"{self.source}: cannot sign: {_first_line(err)}") from None
        return signed, _hash_header(signed)


def load_signing_key(path: Path, fingerprint: str | None = None,
                     passphrase: Callable[[str], str | None] = lambda _k: None) -> SigningKey:
    """The secret key in ``path`` (the one with ``fingerprint`` when it holds several).

    ``passphrase(description)`` is asked only when the key is protected.
    """
    keys = _secret_keys(path)
    if fingerprint:
        want = fingerprint.replace(" ", "").upper()
        keys = [k for k in keys if k[1].fingerprint.upper().endswith(want)]
        if not keys:
            raise UserError(f"{path}: no secret key with fingerprint {fingerprint}")
    if len(keys) > 1:
        listed = ", ".join(c.fingerprint.upper() for _t, c in keys)
        raise UserError(f"{path}: holds {len(keys)} secret keys ({listed}); "
                        "choose one with --fingerprint")
    tsk, cert = keys[0]
    fp, user = cert.fingerprint.upper(), _user(cert)
    try:
        signer = tsk.signer()
    except Exception:
        secret = passphrase(f"{user} ({fp})")
        if secret is None:
            raise UserError(f"{path}: key {fp} is protected by a passphrase: set "
                            f"{PASSPHRASE_ENV} or run on a terminal") from None
        try:
            signer = tsk.signer(secret)
        except Exception:
            raise UserError(f"{path}: wrong passphrase for key {fp}") from None
    return SigningKey(fingerprint=fp, user=user, source=str(path), _signer=signer)


def passphrase_from_env_or_tty(description: str) -> str | None:
    """The passphrase from :data:`PASSPHRASE_ENV`, or asked on the terminal, or None."""
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV]
    try:
        with open("/dev/tty"):
            pass
    except OSError:
        return None
    import getpass

    return getpass.getpass(f"Passphrase for {description}: ")


@dataclass(frozen=True)
class Verified:
    """A good signature: the message it covers and who made it."""

    plaintext: bytes
    fingerprint: str  # the signer's primary key, upper-case hex
    user: str


class UnknownKey(Exception):
    """The signature was made by a key that is not in the keyring."""


class BadSignature(Exception):
    """The OpenPGP signature itself does not verify (the signed text changed)."""


@dataclass(frozen=True)
class Keyring:
    """Trusted public keys, read from files and directories."""

    certs: tuple[pysequoia.Cert, ...]
    sources: tuple[str, ...]

    def fingerprints(self) -> list[str]:
        return [c.fingerprint.upper() for c in self.certs]

    def verify(self, message: bytes) -> Verified:
        """Check a clear-signed ``message``; the signer must be one of these keys."""
        asked: list[str] = []

        def store(ids: list[str]) -> list[pysequoia.Cert]:
            asked.extend(ids)
            return list(self.certs)

        try:
            result = pysequoia.verify(bytes=message, store=store)
        except Exception as err:
            text = _first_line(err)
            if "missing key" in text.lower() or "no key" in text.lower() or (
                    asked and not self._knows(asked)):
                raise UnknownKey(", ".join(asked) or text) from None
            raise BadSignature(text) from None
        good = result.valid_sigs
        if not good:
            raise BadSignature("no valid signature")
        fp = good[0].certificate.upper()
        cert = next(c for c in self.certs if c.fingerprint.upper() == fp)
        return Verified(plaintext=result.bytes, fingerprint=fp, user=_user(cert))

    def _knows(self, ids: Iterable[str]) -> bool:
        return any(fp.endswith(i.upper()) for i in ids for fp in self.fingerprints())


def load_keyring(paths: Iterable[Path]) -> Keyring:
    """Every public key in ``paths`` (files, or directories of key files)."""
    certs: dict[str, pysequoia.Cert] = {}
    sources = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            for cert in _certs(file):
                certs.setdefault(cert.fingerprint.upper(), cert)
        sources.append(str(path))
    return Keyring(certs=tuple(certs.values()), sources=tuple(sources))


def public_key(key: Path) -> str:
    """The armored public key of each key in ``key`` (for ``apptainer key import``).

    ``str()`` of a certificate is its public part, even when read from a secret key.
    """
    return "".join(str(c) for c in _certs(key))


def _certs(path: Path) -> list[pysequoia.Cert]:
    data = _read(path)
    try:
        return pysequoia.Cert.split_bytes(data)
    except Exception as err:
        raise UserError(f"{path}: not an OpenPGP key file ({_first_line(err)})") from None


def _secret_keys(path: Path) -> list[tuple[pysequoia.Tsk, pysequoia.Cert]]:
    """Each secret key in a key file or keyring, split at every primary key packet."""
    data = _read(path)
    try:
        packets = [p for block in _blocks(data)
                   for p in pysequoia.packet.PacketPile.from_bytes(block)]
        runs: list[list] = []
        for p in packets:
            if p.tag in (Tag.SecretKey, Tag.PublicKey) or not runs:
                runs.append([])
            runs[-1].append(p)
        tsks = [pysequoia.Tsk.from_packets(run) for run in runs if run[0].tag == Tag.SecretKey]
        keys = [(t, t.extract_certificate()) for t in tsks]
    except Exception as err:
        raise UserError(f"{path}: not an OpenPGP secret key file ({_first_line(err)})") from None
    if not keys:
        raise UserError(f"{path}: holds no OpenPGP secret key")
    return keys


def _blocks(data: bytes) -> list[bytes]:
    """Each armored block of a text file (a file may hold several keys), or the binary."""
    begin = b"-----BEGIN PGP "
    if not data.lstrip().startswith(begin):
        return [data]
    return [begin + part for part in data.split(begin)[1:]]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def _user(cert: pysequoia.Cert) -> str:
    ids = cert.user_ids
    return str(ids[0]) if ids else "(no user ID)"


def _hash_header(signed: bytes) -> str:
    """The ``Hash:`` armor header of a clear-signed message (SHA256 when absent)."""
    for line in signed.splitlines()[1:4]:
        if line.startswith(b"Hash: "):
            return line[6:].decode().split(",")[0].strip().upper()
    return "SHA256"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
