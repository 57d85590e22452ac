"""server/intake.py without sockets: one accepted envelope per path, one named negative test per refusal."""

from __future__ import annotations

import struct

import pytest

from securecomm.crypto import envelope as E
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from securecomm.server import intake
from securecomm.wire.protocol import OPAQUE_TEXTS, ErrorCode

SERVER = PrivateIdentity.generate("x25519")
ALICE = PrivateIdentity.generate("x25519")
BOB = PrivateIdentity.generate("x25519")
MALLORY = PrivateIdentity.generate("x25519")
NOW = 1_800_000_000_000
WINDOW = 5 * 60 * 1000
TO_SERVER = intake.Rules(SERVER.public.fingerprint, WINDOW)
TO_BOB = intake.Rules(BOB.public.fingerprint, WINDOW, "bob")


def _checked(raw: bytes, rules: intake.Rules, sender: PrivateIdentity | None = ALICE, now: int = NOW,
             opener: PrivateIdentity | None = None) -> intake.Accepted | intake.Refusal:
    parsed = intake.parse(raw)
    assert isinstance(parsed, E.Envelope)
    return intake.check(parsed, rules, sender.public if sender else None, now, opener)


def _refusal(result: intake.Accepted | intake.Refusal) -> intake.Refusal:
    assert isinstance(result, intake.Refusal), result
    return result


def test_send_to_the_server_is_opened_and_its_body_digest_kept():
    raw = E.seal(b"hello", ALICE, SERVER.public, timestamp_ms=NOW)
    result = _checked(raw, TO_SERVER, opener=SERVER)
    assert isinstance(result, intake.Accepted)
    assert result.digest == sha256(b"hello")


def test_direct_is_verified_not_opened_and_its_envelope_digest_kept():
    raw = E.seal(b"hello", ALICE, BOB.public, timestamp_ms=NOW)
    result = _checked(raw, TO_BOB)
    assert isinstance(result, intake.Accepted)
    assert result.digest == sha256(raw)


def test_malformed_is_rejected_as_integrity():
    refusal = intake.parse(b"not an envelope at all, just some text that is long enough")
    assert isinstance(refusal, intake.Refusal)
    assert refusal.code is ErrorCode.INTEGRITY and refusal.message == OPAQUE_TEXTS[ErrorCode.INTEGRITY]
    assert refusal.detail  # what failed, for the server log only


@pytest.mark.parametrize("rules, opener", [(TO_SERVER, SERVER), (TO_BOB, None)])
def test_wrong_recipient(rules: intake.Rules, opener: PrivateIdentity | None):
    raw = E.seal(b"x", ALICE, MALLORY.public, timestamp_ms=NOW)
    assert _refusal(_checked(raw, rules, opener=opener)).code is ErrorCode.WRONG_RECIPIENT


@pytest.mark.parametrize("skew", [WINDOW + 1, -(WINDOW + 1)])
def test_outside_the_time_window(skew: int):
    raw = E.seal(b"x", ALICE, BOB.public, timestamp_ms=NOW + skew)
    assert _refusal(_checked(raw, TO_BOB)).code is ErrorCode.STALE
    # the edge of the window is still inside
    assert isinstance(_checked(E.seal(b"x", ALICE, BOB.public, timestamp_ms=NOW + WINDOW), TO_BOB), intake.Accepted)


def test_unknown_sender_is_forbidden():
    raw = E.seal(b"x", MALLORY, BOB.public, timestamp_ms=NOW)
    refusal = _refusal(_checked(raw, TO_BOB, sender=ALICE))
    assert refusal.code is ErrorCode.FORBIDDEN and "not signed by the identity" in refusal.message


def test_no_key_proven_is_forbidden():
    raw = E.seal(b"x", ALICE, SERVER.public, timestamp_ms=NOW)
    refusal = _refusal(_checked(raw, TO_SERVER, sender=None, opener=SERVER))
    assert refusal.code is ErrorCode.FORBIDDEN and "has not proved a key" in refusal.message


@pytest.mark.parametrize("rules, to, opener", [(TO_SERVER, SERVER, SERVER), (TO_BOB, BOB, None)])
def test_bad_signature(rules: intake.Rules, to: PrivateIdentity, opener: PrivateIdentity | None):
    raw = E.seal(b"x", ALICE, to.public, timestamp_ms=NOW)
    forged = raw[:-1] + bytes([raw[-1] ^ 1])
    refusal = _refusal(_checked(forged, rules, opener=opener))
    assert refusal.code is ErrorCode.INTEGRITY
    # the peer is told one opaque text; which check failed goes only to the server log
    assert refusal.message == OPAQUE_TEXTS[ErrorCode.INTEGRITY]
    assert refusal.detail == "envelope signature does not verify"


def test_digest_mismatch():
    # a sender that puts the wrong digest inside: signature and tag are fine, the digest is not
    header = E.Header("x25519", E.new_msg_id(), NOW, ALICE.public.fingerprint, SERVER.public.fingerprint).pack()
    sealed = E._SUITES["x25519"].encrypt(sha256(b"other") + b"body", SERVER.public.hpke_key,
                                         info=E.INFO_LABEL + header)
    signed = header + struct.pack(">HI", 32, len(sealed) - 32) + sealed
    refusal = _refusal(_checked(signed + ALICE.sign(E.SIGN_LABEL + signed), TO_SERVER, opener=SERVER))
    assert refusal.code is ErrorCode.INTEGRITY and "digest" in refusal.detail
    assert refusal.message == OPAQUE_TEXTS[ErrorCode.INTEGRITY]
