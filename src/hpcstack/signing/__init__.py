"""Signing SIF images the way Apptainer does, and checking signatures.

``apptainer sign`` writes, for each object group of a SIF image, one signature
object: an OpenPGP clear-signed JSON document of digests (``integrity``),
linked to the group, with the hash type and the signer's fingerprint in its
descriptor (``sifwrite``).  ``hpcstack sign`` writes the same objects and
``hpcstack verify`` checks them, so either tool verifies the other's
signatures.  OpenPGP itself is Sequoia-PGP's (``pgp``).
"""

from hpcstack.signing.image import SignResult, VerifyResult, sign_image, verify_image

__all__ = ["SignResult", "VerifyResult", "sign_image", "verify_image"]
