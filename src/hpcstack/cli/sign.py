"""``hpcstack sign`` and ``hpcstack verify``: SIF signatures that Apptainer reads and writes.

Keys default to Apptainer's own keyring (``~/.apptainer/keys``, or
``APPTAINER_KEYSDIR``), so a user with ``apptainer key newpair`` keys signs
and verifies with no options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)


def sign(
    image: Annotated[Path, typer.Argument(help="The SIF image to sign (in place).")],
    key: Annotated[Path | None, typer.Option(
        "--key", "-k", help="OpenPGP secret key file, armored or binary "
        "(default: Apptainer's ~/.apptainer/keys/pgp-secret).")] = None,
    fingerprint: Annotated[str | None, typer.Option(
        "--fingerprint", help="Which key, when the file holds several.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sign every object group of a SIF image, as `apptainer sign` does.

    A protected key's passphrase comes from HPCSTACK_SIGN_PASSPHRASE, or is asked.
    """
    from hpcstack.signing import sign_image
    from hpcstack.signing.pgp import (
        apptainer_keys_dir,
        load_signing_key,
        passphrase_from_env_or_tty,
    )

    secret = load_signing_key(key or _default(apptainer_keys_dir() / "pgp-secret", "--key"),
                              fingerprint, passphrase_from_env_or_tty)
    result = sign_image(image, secret)
    if as_json:
        print(json.dumps({"image": result.image, "fingerprint": result.fingerprint,
                          "user": result.user, "signatures": result.signatures}))
        return
    err.print(f"[green]Signed[/] {image} as {result.user} ({result.fingerprint})",
              highlight=False, soft_wrap=True)


def verify(
    image: Annotated[Path, typer.Argument(help="The SIF image to check.")],
    keyring: Annotated[list[Path] | None, typer.Option(
        "--keyring", help="Trusted public keys: a key file or keyring, or a directory of "
        "them (repeatable; default: Apptainer's ~/.apptainer/keys/pgp-public).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check that every object group of a SIF image is signed by a trusted key, unchanged."""
    from hpcstack.signing import verify_image
    from hpcstack.signing.pgp import apptainer_keys_dir, load_keyring

    ring = load_keyring(keyring or [_default(apptainer_keys_dir() / "pgp-public", "--keyring")])
    result = verify_image(image, ring)
    if as_json:
        print(json.dumps({"image": result.image, "groups": [
            {"group": g.group, "objects": g.objects, "fingerprint": g.fingerprint,
             "user": g.user} for g in result.groups]}))
        return
    objects = sum(len(g.objects) for g in result.groups)
    err.print(f"[green]Verified[/] {image}: {objects} objects signed by "
              f"{', '.join(result.signers)}", highlight=False, soft_wrap=True)


def _default(path: Path, option: str) -> Path:
    """Apptainer's keyring file, when the user has one."""
    from hpcstack.errors import UserError

    if not path.exists():
        raise UserError(f"{path}: no such keyring (pass {option}, or make keys with "
                        "`apptainer key newpair`)")
    return path
