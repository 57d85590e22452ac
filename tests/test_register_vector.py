"""Known answers for the registration proof of possession (docs/PROTOCOL.md 3.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as S
from cryptography.hazmat.primitives.asymmetric import ed25519

from securecomm.wire import protocol as P

DOC = json.loads((Path(__file__).parent / "vectors" / "register-signature-v1.json").read_text())
CASES = [c for c in DOC["cases"] if c["expect"] == "ok"]
NEGATIVE = [c for c in DOC["cases"] if c["expect"] == "bad signature"]


def _inputs(v):
    return bytes.fromhex(v["challenge"]), bytes.fromhex(v["server_fingerprint"]), v["user"]


@pytest.mark.parametrize("v", CASES, ids=lambda v: v["user"])
def test_transcript_and_signature_match_the_vector(v):
    assert DOC["label"].encode() == P.REGISTER_LABEL
    transcript = P.register_transcript(*_inputs(v))
    assert transcript.hex() == v["transcript"]
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["ed25519_seed"]))
    assert key.public_key().public_bytes(S.Encoding.Raw, S.PublicFormat.Raw).hex() == v["ed25519_public"]
    assert key.sign(transcript).hex() == v["signature"]  # Ed25519 is deterministic
    key.public_key().verify(bytes.fromhex(v["signature"]), transcript)


def _public(v) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["ed25519_public"]))


@pytest.mark.parametrize("v", CASES, ids=lambda v: v["user"])
def test_registration_signature_is_not_a_login_signature(v):
    with pytest.raises(InvalidSignature):
        _public(v).verify(bytes.fromhex(v["signature"]), P.login_transcript(*_inputs(v)))


@pytest.mark.parametrize("v", CASES, ids=lambda v: v["user"])
def test_other_challenge_fails(v):
    _challenge, fp, user = _inputs(v)
    with pytest.raises(InvalidSignature):
        _public(v).verify(bytes.fromhex(v["signature"]), P.register_transcript(bytes(32), fp, user))


@pytest.mark.parametrize("v", CASES, ids=lambda v: v["user"])
def test_other_user_fails(v):
    challenge, fp, user = _inputs(v)
    with pytest.raises(InvalidSignature):
        _public(v).verify(bytes.fromhex(v["signature"]), P.register_transcript(challenge, fp, user + "x"))


@pytest.mark.parametrize("v", CASES, ids=lambda v: v["user"])
def test_other_server_fails(v):
    challenge, _fp, user = _inputs(v)
    with pytest.raises(InvalidSignature):
        _public(v).verify(bytes.fromhex(v["signature"]), P.register_transcript(challenge, bytes(32), user))


def test_negative_cases_cover_each_binding():
    assert len(NEGATIVE) >= 4 and len(DOC["cases"]) == len(CASES) + len(NEGATIVE)


@pytest.mark.parametrize("v", NEGATIVE, ids=lambda v: v["name"])
def test_negative_vector_does_not_verify(v):
    """Each must-fail case: its transcript is what our code builds, and the signature fails on it."""
    assert bytes.fromhex(v["transcript"]) in (P.register_transcript(*_inputs(v)), P.login_transcript(*_inputs(v)))
    with pytest.raises(InvalidSignature):
        _public(v).verify(bytes.fromhex(v["signature"]), bytes.fromhex(v["transcript"]))
