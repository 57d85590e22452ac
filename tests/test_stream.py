"""The streaming envelope (crypto/stream.py, docs/PROTOCOL.md 2.6): vectors, one case per failure, properties."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from securecomm.crypto import stream as S
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import DecryptError, SecurecommError, SignatureError, TruncatedError, UnknownSenderError
from tests.vectorkeys import identity_from_raw, outcomes

VECTORS = json.loads((Path(__file__).parent / "vectors" / "stream-v1.json").read_text())
STREAMS = {c["name"]: c for c in VECTORS["streams"]}
SEALED = S.SEALED_CHUNK_SIZE


def _raw(case: dict[str, Any]) -> bytes:
    return base64.b64decode(case["stream_b64"]) if "stream_b64" in case else _mutate(case["mutation"])


def _mutate(name: str) -> bytes:
    """The edits of the `multi` stream, as the vector file's `mutations` describe them."""
    raw = base64.b64decode(STREAMS["multi"]["stream_b64"])
    enc_len = int.from_bytes(raw[100:102], "big")
    h = 102 + enc_len + 48 + 64
    head, c0, c1, c2, trailer = raw[:h], raw[h : h + SEALED], raw[h + SEALED : h + 2 * SEALED], \
        raw[h + 2 * SEALED : -80], raw[-80:]
    assert len(c2) == 116 and head + c0 + c1 + c2 + trailer == raw
    flipped = bytearray(raw)
    flipped[h + SEALED] ^= 1
    return {"reordered": head + c1 + c0 + c2 + trailer, "truncated": head + c0 + c1 + trailer,
            "extended": head + c0 + c1 + c1 + c2 + trailer, "flipped": bytes(flipped),
            "cut-in-trailer": head + c0[:95]}[name]


def _open(raw: bytes, case: dict[str, Any], split: int = 4096) -> tuple[bytes, S.Opening]:
    recipient = identity_from_raw(case["recipient"])
    assert recipient.public.line == case["recipient_identity"]
    opening = S.open_stream((raw[i : i + split] for i in range(0, len(raw), split)), recipient,
                            PublicIdentity.from_line(case["sender"]))
    return b"".join(opening), opening


@pytest.mark.parametrize("case", VECTORS["chunks"], ids=lambda c: f"{c['counter']}-{c['last']}")
def test_chunk_vector_reproduced(case):
    nonce = S.chunk_nonce(case["counter"], case["last"])
    assert nonce.hex() == case["nonce"]
    aead = ChaCha20Poly1305(bytes.fromhex(case["payload_key"]))
    assert aead.encrypt(nonce, bytes.fromhex(case["plaintext"]), None).hex() == case["ciphertext"]


@pytest.mark.parametrize("case", VECTORS["streams"], ids=lambda c: c["name"])
def test_stream_vector(case):
    raw = _raw(case)
    if case["expect"] != "ok":
        with pytest.raises(SecurecommError) as e:
            _open(raw, case)
        assert type(e.value) is outcomes()[case["expect"]], type(e.value).__name__
        return
    body, opening = _open(raw, case)
    if "body" in case:
        assert body == bytes.fromhex(case["body"])
    else:
        assert (len(body), sha256(body).hex()) == (case["body_length"], case["body_sha256"])
    assert opening.digest == sha256(body) and opening.length == len(body)


def test_vectors_cover_every_suite_and_failure():
    kems = {S.parse_header(S._Pull([_raw(c)])).header.kem for c in VECTORS["streams"] if c["expect"] == "ok"}
    assert kems == {"mlkem768-x25519", "p256", "x25519"}
    assert {"reordered", "truncated", "extended", "flipped", "wrong-last-flag", "bad-header-signature",
            "bad-final-signature", "empty-last-chunk"} <= set(STREAMS)


def test_ok_vector_keys_derive_as_specified():
    """An implementer can check the key schedule: the vector's file key opens the multi stream's chunk 0."""
    case = STREAMS["multi"]
    raw = _raw(case)
    header = S.parse_header(S._Pull([raw]))
    key = S.derive_key(bytes.fromhex(case["file_key"]), S.PAYLOAD_LABEL, header.preamble)
    chunk0 = raw[header.size : header.size + SEALED]
    assert ChaCha20Poly1305(key).decrypt(S.chunk_nonce(0, False), chunk0, None)[:5] == bytes([0, 1, 2, 3, 4])


# -- properties -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair() -> tuple[PrivateIdentity, PrivateIdentity]:
    return PrivateIdentity.generate("x25519"), PrivateIdentity.generate("x25519")


@pytest.mark.parametrize("size", [0, 1, S.CHUNK_SIZE - 1, S.CHUNK_SIZE, S.CHUNK_SIZE + 1, 3 * S.CHUNK_SIZE,
                                  5 * S.CHUNK_SIZE + 7])
@pytest.mark.parametrize("split", [1000, S.CHUNK_SIZE, 1 << 20])
def test_round_trip_any_size_any_blocks(pair, size, split):
    alice, bob = pair
    body = os.urandom(size)
    blocks = [body[i : i + split] for i in range(0, size, split)]
    raw = b"".join(S.seal(blocks, alice, bob.public))
    expected_chunks = max(1, -(-size // S.CHUNK_SIZE))
    header = S.parse_header(S._Pull([raw]))
    assert len(raw) == header.size + size + 16 * expected_chunks + S.TRAILER_SIZE
    pieces = list(S.open_stream((raw[i : i + split] for i in range(0, len(raw), split)), bob, alice.public))
    assert b"".join(pieces) == body


def test_seal_is_lazy_and_bounded(pair):
    """Constant memory: 64 MiB of input in 1 MiB blocks, never more than ~1 MiB out at once, input pulled as needed."""
    alice, bob = pair
    block, pulled = bytes(1 << 20), []

    def source():
        for i in range(64):
            pulled.append(i)
            yield block

    out = S.seal(source(), alice, bob.public)
    next(out)  # the header: no input needed yet
    assert pulled == []
    for n, piece in enumerate(out):
        assert len(piece) <= 17 * SEALED
        assert len(pulled) <= n + 2  # at most one block read ahead of what was sealed


def test_open_is_lazy_and_bounded(pair):
    alice, bob = pair
    raw = b"".join(S.seal([bytes(8 << 20)], alice, bob.public))
    pulled = []

    def source():
        for i in range(0, len(raw), 1 << 20):
            pulled.append(i)
            yield raw[i : i + (1 << 20)]

    for n, piece in enumerate(S.open_stream(source(), bob, alice.public)):
        assert len(piece) <= 2 << 20  # the header's read-ahead block and the next one, at most
        assert len(pulled) <= n + 3


def test_last_chunk_held_until_signature_verifies(pair):
    """A reader releasing pieces never sees the last chunk of a stream whose final signature fails."""
    alice, bob = pair
    body = os.urandom(3 * S.CHUNK_SIZE + 10)
    raw = bytearray(b"".join(S.seal([body], alice, bob.public)))
    raw[-1] ^= 1  # the trailer's tag
    got = []
    with pytest.raises(DecryptError):
        for piece in S.open_stream([bytes(raw)], bob, alice.public):
            got.append(piece)
    assert b"".join(got) == body[: 3 * S.CHUNK_SIZE]


def test_truncated_header(pair):
    alice, bob = pair
    raw = b"".join(S.seal([b"x"], alice, bob.public))
    with pytest.raises(TruncatedError):
        S.open_stream([raw[:150]], bob, alice.public)


def test_unknown_sender(pair):
    alice, bob = pair
    raw = b"".join(S.seal([b"x"], alice, bob.public))
    with pytest.raises(UnknownSenderError):
        S.open_stream([raw], bob, PrivateIdentity.generate("x25519").public)


def test_header_signed_by_someone_else(pair):
    """The header signature is checked before any chunk: another signer's header is refused up front."""
    alice, bob = pair
    mallory = PrivateIdentity.generate("x25519")
    raw = b"".join(S.seal([b"x"], mallory, bob.public))
    fake_sender = raw[:36] + alice.public.fingerprint + raw[68:]
    with pytest.raises(SignatureError):
        S.open_stream([fake_sender], bob, alice.public)


def test_any_mutation_opens_or_raises_our_error(pair):
    """Fuzz: every single-byte change, cut or extension of a small stream either raises a SecurecommError
    (never another exception) or, for no change at all, opens to the body."""
    import random

    alice, bob = pair
    body = os.urandom(S.CHUNK_SIZE + 50)
    raw = b"".join(S.seal([body], alice, bob.public))
    rng = random.Random(16)
    for _ in range(300):
        data = bytearray(raw)
        kind = rng.choice(["flip", "cut", "extend"])
        if kind == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            del data[rng.randrange(len(data)) :]
        else:
            data += os.urandom(rng.randrange(1, 100))
        with pytest.raises(SecurecommError):
            b"".join(S.open_stream([bytes(data)], bob, alice.public))
