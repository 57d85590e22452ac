"""Regenerate stream-v2.json, the version-2 stream's vectors (docs/PROTOCOL.md 2.6.1, 6.11).

python -m tests.vectors.make_stream_vectors_v2

A version-2 stream has no HPKE part (its file key travels in the file
notice), and Ed25519 is deterministic, so every stream here is reproduced
byte for byte from its inputs: `sender` (raw keys, 5.7), `account` (the
recipient account's user key fingerprint, from the `user_key_seed`),
`file_key`, `file_id`, `timestamp_ms` and the body. The two-chunk stream is
given by its SHA-256 (`stream_sha256`) to keep the file small. Cases that
must fail are opened with the `file_key` and `account` given in the case.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from securecomm.crypto import devices as D
from securecomm.crypto import stream as S
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from tests.vectorkeys import identity_from_raw, raw_keys

FILE_KEY = bytes(range(32))
FILE_ID = bytes(range(16, 32))
TIMESTAMP_MS = 1_764_115_200_000
USER_KEY_SEED = sha256(b"securecomm test vector/stream-v2/carol user key")


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def account() -> bytes:
    return D.UserKey.from_seed(USER_KEY_SEED).public.fingerprint


def _seal(body: bytes, sender: PrivateIdentity, to: bytes | None = None) -> bytes:
    return b"".join(S.seal_detached([body] if body else [], sender, account() if to is None else to, FILE_KEY,
                                    file_id=FILE_ID, timestamp_ms=TIMESTAMP_MS))


def _steps(sender: PrivateIdentity) -> dict[str, str]:
    """Every intermediate value of sealing `"a small file"`, for implementers to follow."""
    labels = S.LABELS[S.VERSION_DETACHED]
    preamble = S._preamble_detached(sender, account(), FILE_ID, TIMESTAMP_MS)
    header_sig = sender.sign(labels.header + preamble)
    body = b"a small file"
    payload_key = S.derive_key(FILE_KEY, labels.payload, preamble)
    trailer_key = S.derive_key(FILE_KEY, labels.trailer, preamble)
    final = sender.sign(S.final_transcript(preamble, header_sig, len(body), sha256(body), labels.final))
    return {"preamble": preamble.hex(), "header_sig": header_sig.hex(), "payload_key": payload_key.hex(),
            "trailer_key": trailer_key.hex(),
            "chunk_0": ChaCha20Poly1305(payload_key).encrypt(S.chunk_nonce(0, True), body, None).hex(),
            "final_sig": final.hex(),
            "trailer": ChaCha20Poly1305(trailer_key).encrypt(bytes(12), final, None).hex()}


def _edited(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value):]


def cases(sender: PrivateIdentity) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def case(name: str, raw: bytes, expect: str, **extra: Any) -> None:
        out.append({"name": name, "expect": expect, "stream_b64": base64.b64encode(raw).decode(), **extra})

    small = _seal(b"a small file", sender)
    case("ok", small, "ok", body=b"a small file".hex())
    case("empty", _seal(b"", sender), "ok", body="")
    multi = pattern(2 * S.CHUNK_SIZE + 100)
    out.append({"name": "multi", "expect": "ok", "body_length": len(multi), "body_sha256": sha256(multi).hex(),
                "stream_sha256": sha256(_seal(multi, sender)).hex(),
                "stream_length": S.sealed_size_detached(len(multi))})
    case("wrong-file-key", small, "decryption failed", file_key=bytes(32).hex())
    case("another-account", small, "wrong recipient", account=sha256(b"someone else").hex())
    case("no-file-key", small, "wrong recipient", file_key=None)  # e.g. offline `decrypt`: refused by name
    case("kem-named", _edited(small, 5, bytes.fromhex("0020")), "unknown suite")
    case("enc-len-not-zero", _edited(small, 100, bytes.fromhex("0020")), "bad format")
    flipped = bytearray(small)
    flipped[102] ^= 1  # the first byte of header_sig
    case("bad-header-signature", bytes(flipped), "bad signature")
    # a version-1 label on a version-2 preamble: the label is bound, a signature made for the other version fails
    v1_signed = _edited(small, 102, sender.sign(S.HEADER_LABEL + small[:102]))
    case("version-1-header-label", v1_signed, "bad signature")
    case("truncated", small[:102 + 64 + 16 + 79], "truncated")
    return out


def main() -> None:
    sender_keys = raw_keys("alice-device", "x25519")
    sender = identity_from_raw(sender_keys)
    data = {"note": "test-only keys; docs/PROTOCOL.md 2.6.1 and 6.11. Every stream is deterministic: reproduce "
                    "ok streams byte for byte (stream_b64, or stream_sha256 for `multi`); open every case with "
                    "`file_key` and `account` (a case may override either; null: none given) and expect `expect`.",
            "sender": sender_keys, "sender_identity": sender.public.line,
            "user_key_seed": USER_KEY_SEED.hex(), "account": account().hex(),
            "file_key": FILE_KEY.hex(), "file_id": FILE_ID.hex(), "timestamp_ms": TIMESTAMP_MS,
            "labels": {k: v.decode() for k, v in vars(S.LABELS[S.VERSION_DETACHED]).items()},
            "steps": _steps(sender), "streams": cases(sender)}
    out = Path(__file__).parent / "stream-v2.json"
    out.write_text(json.dumps(data, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
