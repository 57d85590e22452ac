"""SHA-256 digests and constant-time comparison.

The digest of a message body travels inside the encryption and is echoed by
receipts; every comparison of a digest, tag, fingerprint or secret goes
through `same()` so that timing never tells how many leading bytes matched.
"""

from __future__ import annotations

import hashlib
import hmac

DIGEST_SIZE = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality for digests, fingerprints and secrets."""
    return hmac.compare_digest(a, b)
