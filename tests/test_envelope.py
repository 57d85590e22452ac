"""The envelope: round trips per suite, one named negative test per failure, fuzzing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securecomm.crypto import envelope as E
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import (
    DecryptError,
    DigestError,
    FormatError,
    OversizedError,
    SecurecommError,
    SignatureError,
    TrailingDataError,
    TruncatedError,
    UnknownSenderError,
    UnknownSuiteError,
    VersionError,
    WrongRecipientError,
)
from tests.vectorkeys import outcomes

SUITES = ["mlkem768-x25519", "x25519", "p256"]
KEYS = {kem: (PrivateIdentity.generate(kem), PrivateIdentity.generate(kem)) for kem in SUITES}
ALICE, BOB = KEYS["x25519"]
MALLORY = PrivateIdentity.generate("x25519")


def resign(raw: bytes, signer: PrivateIdentity = ALICE) -> bytes:
    body = raw[: -E.SIGNATURE_SIZE]
    return body + signer.sign(E.SIGN_LABEL + body)


@pytest.mark.parametrize("kem", SUITES)
@pytest.mark.parametrize("size", [0, 1, 64 * 1024, E.MAX_BODY_SIZE])
def test_round_trip(kem, size):
    sender, recipient = KEYS[kem]
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = E.seal(body, sender, recipient.public)
    assert len(raw) <= E.MAX_ENVELOPE_SIZE
    opened = E.open_envelope(raw, recipient, sender.public)
    assert opened.body == body
    assert opened.digest == sha256(body)
    assert opened.sender == sender.public
    assert opened.header.kem == kem


def test_header_fields_travel_and_are_signed():
    raw = E.seal(b"hi", ALICE, BOB.public, msg_id=b"\x01" * 16, timestamp_ms=1_700_000_000_000)
    env = E.parse(raw)
    assert env.header.msg_id == b"\x01" * 16
    assert env.header.timestamp_ms == 1_700_000_000_000
    assert env.header.sender == ALICE.public.fingerprint
    assert env.header.recipient == BOB.public.fingerprint


def test_body_over_maximum_is_refused():
    with pytest.raises(OversizedError):
        E.seal(bytes(E.MAX_BODY_SIZE + 1), ALICE, BOB.public)


# -- one named negative test per failure mode --------------------------------------
@pytest.fixture
def raw():
    return E.seal(b"attack at dawn", ALICE, BOB.public)


def open_(data, recipient=BOB, senders=None):
    return E.open_envelope(data, recipient, senders or {ALICE.public.fingerprint: ALICE.public})


def test_truncated(raw):
    for n in (0, 10, E.HEADER_SIZE, len(raw) - 1):
        with pytest.raises(TruncatedError):
            open_(raw[:n])


def test_oversized(raw):
    with pytest.raises(OversizedError):
        open_(raw + bytes(E.MAX_ENVELOPE_SIZE))


def test_extended(raw):
    with pytest.raises(TrailingDataError):
        open_(raw + b"\0")


def test_reordered_fields(raw):
    # swap sender and recipient fingerprints: addressed to the wrong party now
    h = bytearray(raw)
    s, r = slice(E.HEADER_SIZE - 64, E.HEADER_SIZE - 32), slice(E.HEADER_SIZE - 32, E.HEADER_SIZE)
    h[s], h[r] = raw[r], raw[s]
    with pytest.raises(WrongRecipientError):
        open_(bytes(h))
    # swap enc and the start of the ciphertext: lengths no longer fit the suite, or the signature fails
    enc_at = E.HEADER_SIZE + 6
    swapped = raw[:enc_at] + raw[enc_at + 32 : enc_at + 64] + raw[enc_at : enc_at + 32] + raw[enc_at + 64 :]
    with pytest.raises(SignatureError):
        open_(swapped)


def test_wrong_magic(raw):
    with pytest.raises(FormatError):
        open_(b"XXXX" + raw[4:])


def test_wrong_version(raw):
    with pytest.raises(VersionError):
        open_(raw[:4] + b"\x02" + raw[5:])


def test_unknown_suite(raw):
    with pytest.raises(UnknownSuiteError):
        open_(raw[:5] + struct.pack(">H", 0x0021) + raw[7:])
    with pytest.raises(UnknownSuiteError):  # AES-128-GCM is not a suite securecomm speaks
        open_(raw[:9] + struct.pack(">H", 0x0001) + raw[11:])


def test_reserved_flags(raw):
    with pytest.raises(FormatError):
        open_(raw[:11] + b"\x01" + raw[12:])


def test_bad_signature(raw):
    with pytest.raises(SignatureError):
        open_(raw[:-1] + bytes([raw[-1] ^ 1]))


def test_signature_by_someone_else(raw):
    with pytest.raises(SignatureError):
        open_(resign(raw, MALLORY))


def test_bad_tag(raw):
    # the sender itself (or a forger with its key) flips a ciphertext bit and re-signs:
    # the signature now verifies, so only the AEAD tag can catch it
    tampered = bytearray(raw)
    tampered[-E.SIGNATURE_SIZE - 1] ^= 1
    with pytest.raises(DecryptError):
        open_(resign(bytes(tampered)))


def test_relabelled_header_fails_decryption(raw):
    # change the timestamp and re-sign: HPKE's info binds the header, so decryption fails
    h = bytearray(raw)
    h[E.HEADER_SIZE - 65] ^= 1
    with pytest.raises(DecryptError):
        open_(resign(bytes(h)))


def test_wrong_recipient(raw):
    carol = PrivateIdentity.generate("x25519")
    with pytest.raises(WrongRecipientError):
        open_(raw, recipient=carol)


def test_replayed_to_other_recipient_after_relabel(raw):
    # a forger re-addresses Bob's envelope to Carol and re-signs: Carol cannot decrypt it
    carol = PrivateIdentity.generate("x25519")
    h = bytearray(raw)
    h[E.HEADER_SIZE - 32 : E.HEADER_SIZE] = carol.public.fingerprint
    with pytest.raises(DecryptError):
        open_(resign(bytes(h)), recipient=carol)


def test_wrong_digest():
    # a sender that puts the wrong digest inside: signature and tag are fine, digest is not
    header = E.Header("x25519", E.new_msg_id(), E.now_ms(), ALICE.public.fingerprint, BOB.public.fingerprint).pack()
    suite = E._SUITES["x25519"]
    sealed = suite.encrypt(sha256(b"other") + b"body", BOB.public.hpke_key, info=E.INFO_LABEL + header)
    signed = header + struct.pack(">HI", 32, len(sealed) - 32) + sealed
    with pytest.raises(DigestError):
        open_(signed + ALICE.sign(E.SIGN_LABEL + signed))


def test_unknown_sender(raw):
    with pytest.raises(UnknownSenderError):
        E.open_envelope(raw, BOB, {})
    with pytest.raises(UnknownSenderError):
        E.open_envelope(raw, BOB, MALLORY.public)


def test_suite_mismatch_with_recipient_key():
    raw = E.seal(b"x", *[KEYS["p256"][0], KEYS["p256"][1].public])
    wrong = KEYS["x25519"][1]
    with pytest.raises(WrongRecipientError):
        E.open_envelope(raw, wrong, KEYS["p256"][0].public)


# -- vectors: a fixed envelope a second implementation can check against ----------
def test_known_answer_vector():
    v = json.loads((Path(__file__).parent / "vectors" / "envelope-v1.json").read_text())
    for case in v["cases"]:
        recipient = PrivateIdentity.from_pem(case["recipient_key_pem"].encode())
        sender = PublicIdentity.from_line(case["sender"])
        raw = bytes.fromhex(case["envelope"])
        if case["expect"] == "ok":
            opened = E.open_envelope(raw, recipient, sender)
            assert opened.body == bytes.fromhex(case["body"])
            assert opened.header.msg_id.hex() == case["msg_id"]
            assert opened.header.timestamp_ms == case["timestamp_ms"]
        else:
            with pytest.raises(SecurecommError) as e:
                E.open_envelope(raw, recipient, sender)
            assert type(e.value) is outcomes()[case["expect"]]


# -- property: every mutation of a valid envelope is rejected --------------------------
SMALL_A = E.seal(b"property test body", ALICE, BOB.public)
SMALL_B = E.seal(b"another body entirely", ALICE, BOB.public)


def rejected(data: bytes) -> bool:
    try:
        open_(data)
    except SecurecommError:
        return True
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_are_rejected(data):
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "replace"]))
    a = SMALL_A
    if kind == "flip":
        i = data.draw(st.integers(0, len(a) - 1))
        bit = data.draw(st.integers(0, 7))
        mutated = a[:i] + bytes([a[i] ^ (1 << bit)]) + a[i + 1 :]
    elif kind == "truncate":
        mutated = a[: data.draw(st.integers(0, len(a) - 1))]
    elif kind == "extend":
        mutated = a + data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        i = data.draw(st.integers(0, len(a)))
        j = data.draw(st.integers(0, len(SMALL_B)))
        mutated = a[:i] + SMALL_B[j:]
    else:
        i = data.draw(st.integers(0, len(a) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        mutated = a[:i] + chunk + a[i + len(chunk) :]
    if mutated in (SMALL_A, SMALL_B):
        return
    assert rejected(mutated)
