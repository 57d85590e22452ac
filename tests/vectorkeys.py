"""Test-vector key format (docs/PROTOCOL.md 5.7): raw private keys as hex, one field per part.

    {"kem": "x25519" | "p256" | "mlkem768-x25519",
     "ed25519": 32-byte seed (RFC 8032 private key),
     "x25519": 32-byte scalar (RFC 7748)            -- x25519 and the hybrid
     "mlkem768": 64-byte seed d || z (FIPS 203)     -- the hybrid
     "p256": 32-byte big-endian scalar              -- p256}

Keys are derived from a label so that the generator reproduces them exactly.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from securecomm.crypto.identity import PrivateIdentity


def _derive(label: str, part: str, size: int) -> bytes:
    out, counter = b"", 0
    while len(out) < size:
        out += hashlib.sha256(f"securecomm test vector/{label}/{part}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def raw_keys(label: str, kem: str) -> dict[str, str]:
    """Deterministic raw keys for `label` (test only, never for real use)."""
    keys = {"kem": kem, "ed25519": _derive(label, "ed25519", 32).hex()}
    if kem in ("x25519", "mlkem768-x25519"):
        keys["x25519"] = _derive(label, "x25519", 32).hex()
    if kem == "mlkem768-x25519":
        keys["mlkem768"] = _derive(label, "mlkem768", 64).hex()
    if kem == "p256":
        # reduce into [1, n-1]: any 32 bytes are not necessarily a valid P-256 scalar
        n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        keys["p256"] = (int.from_bytes(_derive(label, "p256", 32), "big") % (n - 1) + 1).to_bytes(32, "big").hex()
    return keys


def identity_from_raw(keys: dict[str, Any]) -> PrivateIdentity:
    """Build a private identity from the raw-key form above."""
    kem = keys["kem"]
    sign = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(keys["ed25519"]))
    parts: list[Any]
    if kem == "mlkem768-x25519":
        parts = [mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(keys["mlkem768"])),
                 x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(keys["x25519"]))]
    elif kem == "x25519":
        parts = [x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(keys["x25519"]))]
    else:
        parts = [ec.derive_private_key(int(keys["p256"], 16), ec.SECP256R1())]
    return PrivateIdentity(kem, parts, sign)


def outcomes() -> dict[str, type[Exception]]:
    """Vector `expect` values (the names in docs/PROTOCOL.md 2.4) -> our exception classes."""
    from securecomm import errors as e

    return {"oversized": e.OversizedError, "not an envelope": e.NotAnEnvelopeError,
            "truncated": e.TruncatedError, "trailing data": e.TrailingDataError,
            "bad format": e.FormatError, "wrong version": e.VersionError, "unknown suite": e.UnknownSuiteError,
            "wrong recipient": e.WrongRecipientError, "unknown sender": e.UnknownSenderError,
            "bad signature": e.SignatureError, "decryption failed": e.DecryptError,
            "digest mismatch": e.DigestError}


def outcomes_v2() -> dict[str, type[Exception]]:
    """The `expect` values of the version-2 vectors (docs/PROTOCOL.md 6.9) -> exception classes."""
    from securecomm import errors as e

    return {**outcomes(), "not signed by the user key": e.NotUserKeyError,
            "stale device list": e.StaleDeviceListError, "bad prekey signature": e.PrekeySignatureError,
            "replayed prekey id": e.ReplayedPrekeyError, "no prekey": e.NoPrekeyError,
            "pairing code expired": e.PairingExpiredError, "pairing code used": e.PairingUsedError,
            "pairing code unknown": e.PairingUnknownError}
