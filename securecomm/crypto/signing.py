"""The one Ed25519 verification helper, so every signature failure is the same opaque SignatureError."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from securecomm.errors import SignatureError


def verify_signature(key: ed25519.Ed25519PublicKey, signature: bytes, data: bytes, what: str = "") -> None:
    """Raise SignatureError unless `signature` is `key`'s signature over `data`.

    `what` names the signed thing in the message ("envelope", "room message"); it never includes the data.
    """
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise SignatureError(f"{what} signature does not verify".strip()) from e
