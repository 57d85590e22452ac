"""Regenerate stream-v1.json, the streaming envelope's vectors (docs/PROTOCOL.md 2.6, 5.7).

python -m tests.vectors.make_stream_vectors

Chunk vectors are deterministic and reproduced byte for byte; streams carry
an HPKE encapsulation (randomised) and are to be opened. Streams that must
fail are either built by a sender who breaks a rule (and signs it), or
described as an edit of the `multi` stream (`mutation`), so that the file
stays small: a multi-chunk stream is over 128 KiB.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from securecomm.crypto import stream as S
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from tests.vectorkeys import identity_from_raw, raw_keys

FILE_KEY = bytes(range(32))
FILE_ID = bytes(range(16, 32))
TIMESTAMP_MS = 1_764_115_200_000


def pattern(n: int) -> bytes:
    """The `multi` body: byte i is i mod 251 (so chunks differ from each other)."""
    return bytes(i % 251 for i in range(n))


def _who(label: str, kem: str) -> tuple[dict[str, str], PrivateIdentity]:
    keys = raw_keys(label, kem)
    return keys, identity_from_raw(keys)


def _seal(body: bytes, sender: PrivateIdentity, to: PrivateIdentity) -> bytes:
    return b"".join(S.seal([body], sender, to.public, file_id=FILE_ID, timestamp_ms=TIMESTAMP_MS,
                           file_key=FILE_KEY))


def _rogue(chunks: list[tuple[bytes, bool]], sender: PrivateIdentity, to: PrivateIdentity,
           final_body: bytes | None = None) -> bytes:
    """A stream whose sender seals the given (plaintext, last) chunks as told, and signs it."""
    preamble = S._preamble(sender, to.public, FILE_KEY, FILE_ID, TIMESTAMP_MS)
    header_sig = sender.sign(S.HEADER_LABEL + preamble)
    aead = ChaCha20Poly1305(S.derive_key(FILE_KEY, S.PAYLOAD_LABEL, preamble))
    body = b"".join(p for p, _ in chunks) if final_body is None else final_body
    parts = [aead.encrypt(S.chunk_nonce(i, last), p, None) for i, (p, last) in enumerate(chunks)]
    final = sender.sign(S.final_transcript(preamble, header_sig, len(body), sha256(body)))
    trailer = ChaCha20Poly1305(S.derive_key(FILE_KEY, S.TRAILER_LABEL, preamble)).encrypt(bytes(12), final, None)
    return preamble + header_sig + b"".join(parts) + trailer


def chunk_cases() -> list[dict[str, Any]]:
    key = sha256(b"securecomm test vector/stream payload key")
    aead = ChaCha20Poly1305(key)
    cases = []
    for counter, last, text in ((0, False, b"first chunk"), (1, True, b"last chunk"), (0, True, b""),
                                (2**40 + 5, False, b"a far counter")):
        nonce = S.chunk_nonce(counter, last)
        cases.append({"payload_key": key.hex(), "counter": counter, "last": last, "nonce": nonce.hex(),
                      "plaintext": text.hex(), "ciphertext": aead.encrypt(nonce, text, None).hex()})
    return cases


def stream_cases() -> Iterator[dict[str, Any]]:
    _, alice = _who("alice", "x25519")
    for kem in ("mlkem768-x25519", "p256", "x25519"):
        keys, bob = _who("bob", kem)
        body = f"a small file sealed to a {kem} identity".encode()
        yield _case(f"ok-{kem}", keys, bob, alice, _seal(body, alice, bob), "ok", body=body.hex(),
                    file_key=FILE_KEY.hex(), file_id=FILE_ID.hex(), timestamp_ms=TIMESTAMP_MS)
    keys, bob = _who("bob", "x25519")
    body = pattern(2 * S.CHUNK_SIZE + 100)
    multi = _seal(body, alice, bob)
    yield _case("multi", keys, bob, alice, multi, "ok", body_length=len(body), body_sha256=sha256(body).hex(),
                file_key=FILE_KEY.hex())
    yield _case("empty", keys, bob, alice, _seal(b"", alice, bob), "ok", body="")
    for name, expect in (("reordered", "decryption failed"), ("truncated", "decryption failed"),
                         ("extended", "decryption failed"), ("flipped", "decryption failed"),
                         ("cut-in-trailer", "truncated")):
        yield _case(name, keys, bob, alice, None, expect, mutation=name)
    yield _case("wrong-last-flag", keys, bob, alice, _rogue([(b"only chunk", False)], alice, bob),
                "decryption failed")
    yield _case("empty-last-chunk", keys, bob, alice,
                _rogue([(pattern(S.CHUNK_SIZE), False), (b"", True)], alice, bob), "bad format")
    yield _case("bad-final-signature", keys, bob, alice,
                _rogue([(b"what was sealed", True)], alice, bob, final_body=b"what was signed"), "bad signature")
    bad_header = bytearray(_seal(b"header signature flipped", alice, bob))
    header_size = S.FIXED_SIZE + 2 + 32 + S.SEALED_KEY_SIZE
    bad_header[header_size] ^= 1
    yield _case("bad-header-signature", keys, bob, alice, bytes(bad_header), "bad signature")
    other_keys, carol = _who("carol", "x25519")
    yield _case("wrong-recipient", other_keys, carol, alice, _seal(b"for bob", alice, bob), "wrong recipient")


def _case(name: str, keys: dict[str, str], to: PrivateIdentity, sender: PrivateIdentity, raw: bytes | None,
          expect: str, **extra: Any) -> dict[str, Any]:
    case = {"name": name, "recipient": keys, "recipient_identity": to.public.line, "sender": sender.public.line,
            "expect": expect, **extra}
    if raw is not None:
        case["stream_b64"] = base64.b64encode(raw).decode()
    return case


MUTATIONS = {
    "layout": "multi = header (H = 102 + enc_len + 48 + 64 bytes) | c0 | c1 (65,552 bytes each) | c2 (116) "
              "| trailer (80)",
    "reordered": "header | c1 | c0 | c2 | trailer",
    "truncated": "header | c0 | c1 | trailer (the last chunk dropped: a cut at a chunk boundary)",
    "extended": "header | c0 | c1 | c1 | c2 | trailer (a chunk appended inside)",
    "flipped": "multi with byte H + 65,552 (the first of c1) xor 0x01",
    "cut-in-trailer": "header | the first 95 bytes of c0 (fewer than 16 + 80 after the header)",
}


def main() -> None:
    data = {"note": "test-only keys; docs/PROTOCOL.md 2.6 and 5.7. Streams are base64 (stream_b64); "
                    "a case with `mutation` edits the `multi` stream as `mutations` says.",
            "chunk_size": S.CHUNK_SIZE, "mutations": MUTATIONS, "chunks": chunk_cases(),
            "streams": list(stream_cases())}
    out = Path(__file__).parent / "stream-v1.json"
    out.write_text(json.dumps(data, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
