"""SHA-256 digests and constant-time comparison.

The digest of a message body travels inside the encryption and is echoed by
receipts; every comparison of a digest, tag, fingerprint or secret goes
through `same()` so that timing never tells how many leading bytes matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

DIGEST_SIZE = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality for digests, fingerprints and secrets."""
    return hmac.compare_digest(a, b)


def format_fingerprint(digest: bytes) -> str:
    """The one text form of every fingerprint (identity keys, CA keys, certificates):
    `SHA256:` + base64 without padding, as OpenSSH shows keys."""
    return "SHA256:" + base64.b64encode(digest).rstrip(b"=").decode()
