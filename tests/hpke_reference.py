"""RFC 9180 DHKEM pieces written out for tests: LabeledExtract / LabeledExpand.

Test helper only; the product path uses `cryptography`'s HPKE.
"""

from __future__ import annotations

import hashlib
import hmac


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + labeled_info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def dhkem_shared_secret(kem_id: int, dh: bytes, enc: bytes, pk_rm: bytes) -> bytes:
    """ExtractAndExpand(dh, kem_context) from RFC 9180 section 4.1."""
    suite_id = b"KEM" + kem_id.to_bytes(2, "big")
    eae_prk = labeled_extract(suite_id, b"", b"eae_prk", dh)
    return labeled_expand(suite_id, eae_prk, b"shared_secret", enc + pk_rm, 32)
