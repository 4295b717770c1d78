"""The site key: U2CB signs every image it builds, in the service, outside the build's jail.

The key is read and unlocked once, when the service starts; the passphrase
(``HPCSTACK_SIGN_PASSPHRASE``) is then removed from the service's environment,
so no build job inherits it.  Builds run in jails that hold only their own
files, and signing happens after the job has ended, in the service process:
neither the key file nor the unlocked key is ever visible to a build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hpcstack.files import sha256_file
from hpcstack.service.config import Settings
from hpcstack.signing import sign_image
from hpcstack.signing.pgp import PASSPHRASE_ENV, SigningKey, load_signing_key


@dataclass(frozen=True)
class SiteSigner:
    key: SigningKey

    def sign(self, image: Path) -> tuple[str, int]:
        """Sign ``image`` in place; its new sha256 and size."""
        sign_image(image, self.key)
        return sha256_file(image), image.stat().st_size


def site_signer(settings: Settings) -> SiteSigner | None:
    """The signer for ``settings.sign_key``, unlocked; None when no key is configured."""
    secret = os.environ.pop(PASSPHRASE_ENV, None)
    if settings.sign_key is None:
        return None
    return SiteSigner(load_signing_key(settings.sign_key, settings.sign_key_fingerprint,
                                       lambda _description: secret))
