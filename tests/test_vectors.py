"""Our implementation against every case of the published vectors (docs/PROTOCOL.md 5.7).

Each file lists inputs, the expected output and the expected outcome; a
second implementation runs the same checks. Keys use the raw format of
tests/vectorkeys.py; deterministic parts (keys, Ed25519 signatures, room
messages) are recomputed byte for byte, HPKE envelopes are opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from securecomm.crypto import envelope as E
from securecomm.crypto import room as R
from securecomm.crypto.identity import PublicIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import SecurecommError
from securecomm.wire import protocol as P
from tests.vectorkeys import identity_from_raw, outcomes, raw_keys

HERE = Path(__file__).parent / "vectors"
ENVELOPES = json.loads((HERE / "envelope-suites-v1.json").read_text())["cases"]
SIGNATURES = json.loads((HERE / "signatures-v1.json").read_text())
ROOM = json.loads((HERE / "room-v1.json").read_text())


def expect_outcome(expect: str, action: Any) -> Any:
    """Run `action`; "ok" must succeed, anything else must raise exactly that outcome's error."""
    if expect == "ok":
        return action()
    with pytest.raises(SecurecommError) as e:
        action()
    assert type(e.value) is outcomes()[expect], f"expected {expect!r}, got {type(e.value).__name__}"
    return None


# -- envelopes: every suite, and one case per failure -------------------------------------
def test_envelope_vectors_cover_every_suite_and_failure():
    ok_suites = {E.parse(bytes.fromhex(c["envelope"])).header.kem for c in ENVELOPES if c["expect"] == "ok"}
    assert ok_suites == set(E.KEM_IDS)
    assert {c["expect"] for c in ENVELOPES} >= {"wrong recipient", "decryption failed", "digest mismatch",
                                                 "bad signature", "unknown sender", "bad format",
                                                 "unknown suite"}


@pytest.mark.parametrize("case", ENVELOPES, ids=lambda c: c["name"])
def test_envelope_vector(case):
    recipient = identity_from_raw(case["recipient"])
    assert recipient.public.line == case["recipient_identity"]
    assert recipient.public == PublicIdentity.from_line(case["recipient_identity"])
    raw = bytes.fromhex(case["envelope"])
    opened = expect_outcome(case["expect"], lambda: E.open_envelope(raw, recipient,
                                                                    PublicIdentity.from_line(case["sender"])))
    if opened is not None:
        assert opened.body == bytes.fromhex(case["body"])
        assert opened.digest == sha256(opened.body)
        assert opened.header.msg_id.hex() == case["msg_id"]
        assert opened.header.timestamp_ms == case["timestamp_ms"]


def test_raw_keys_are_reproducible():
    for kem in E.KEM_IDS:
        assert identity_from_raw(raw_keys("x", kem)).public == identity_from_raw(raw_keys("x", kem)).public
    case = next(c for c in ENVELOPES if c["name"] == "ok mlkem768-x25519")
    assert case["recipient"] == raw_keys("bob-mlkem768-x25519", "mlkem768-x25519")


# -- the login challenge and the delivery receipt ----------------------------------------
@pytest.mark.parametrize("case", SIGNATURES["login"], ids=lambda c: c["name"])
def test_login_signature_vector(case):
    server = PublicIdentity.from_line(case["server_identity"])
    assert server.fingerprint.hex() == case["server_fingerprint"]
    transcript = P.login_transcript(bytes.fromhex(case["challenge"]), server.fingerprint, case["user"].lower())
    assert transcript.hex() == case["transcript"]
    user = identity_from_raw(case["signer"])
    assert user.public.line == case["signer_identity"]
    signature = bytes.fromhex(case["signature"])
    if case["expect"] == "ok":
        assert user.sign(transcript) == signature  # Ed25519 is deterministic: reproduced exactly
    expect_outcome(case["expect"], lambda: _verify(user.public, signature, transcript))


@pytest.mark.parametrize("case", SIGNATURES["delivered"], ids=lambda c: c["name"])
def test_delivered_signature_vector(case):
    body = bytes.fromhex(case["body"])
    assert sha256(body).hex() == case["digest"]
    transcript = P.delivered_transcript(bytes.fromhex(case["msg_id"]), sha256(body))
    assert transcript.hex() == case["transcript"]
    user = identity_from_raw(case["signer"])
    signature = bytes.fromhex(case["signature"])
    if case["expect"] == "ok":
        assert user.sign(transcript) == signature
    expect_outcome(case["expect"], lambda: _verify(user.public, signature, transcript))


def _verify(identity: PublicIdentity, signature: bytes, data: bytes) -> None:
    from cryptography.exceptions import InvalidSignature

    from securecomm.errors import SignatureError

    try:
        identity.verify_key.verify(signature, data)
    except InvalidSignature as e:
        raise SignatureError("signature does not verify") from e


# -- rooms: reproduced byte for byte, then read back ------------------------------------
def _start_key() -> R.SenderKey:
    k = ROOM["sender_key"]
    return R.SenderKey(bytes.fromhex(k["key_id"]), bytes.fromhex(k["chain_key"]), k["iteration"])


def test_room_sender_key_encoding():
    room, key = R.SenderKey.decode(bytes.fromhex(ROOM["sender_key"]["encoded"]))
    assert room == ROOM["room"]
    assert (key.key_id, key.chain_key, key.iteration) == (_start_key().key_id, _start_key().chain_key, 0)


def test_room_messages_are_reproduced_exactly():
    me = identity_from_raw(ROOM["sender"])
    key = _start_key()
    for m in ROOM["messages"]:
        assert key.chain_key.hex() == m["chain_key"]
        payload = R.encrypt(ROOM["room"], bytes.fromhex(m["body"]), me, key, msg_id=bytes.fromhex(m["msg_id"]),
                            timestamp_ms=m["timestamp_ms"])
        assert payload.hex() == m["payload"]
        assert bytes.fromhex(m["aad"]) == R._room_prefix(ROOM["room"]) + payload[:69]


def test_room_message_keys_follow_the_documented_derivation():
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    for m in ROOM["messages"]:
        mk = hmac.new(bytes.fromhex(m["chain_key"]), b"\x01", hashlib.sha256).digest()
        assert mk.hex() == m["message_key"]
        okm = HKDF(hashes.SHA256(), 44, salt=bytes(32), info=b"securecomm/v1/room-message-key").derive(mk)
        assert (okm[:32].hex(), okm[32:].hex()) == (m["aead_key"], m["nonce"])


def test_room_messages_open():
    sender = PublicIdentity.from_line(ROOM["sender_identity"])
    key = _start_key()
    for m in ROOM["messages"]:
        got = R.decrypt(ROOM["room"], bytes.fromhex(m["payload"]), sender, key)
        assert got.body == bytes.fromhex(m["body"])
        assert got.msg_id.hex() == m["msg_id"]


@pytest.mark.parametrize("case", ROOM["negative"], ids=lambda c: c["name"])
def test_room_negative_vector(case):
    sender = PublicIdentity.from_line(ROOM["sender_identity"])
    expect_outcome(case["expect"], lambda: R.decrypt(case["room"], bytes.fromhex(case["payload"]), sender,
                                                     _start_key()))


def test_documented_login_example_is_the_vector():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    case = SIGNATURES["login"][0]
    t = bytes.fromhex(case["transcript"])
    for part in (t[:19], t[19:51], t[51:83], t[84:], bytes.fromhex(case["signature"])[:32],
                 bytes.fromhex(case["signature"])[32:]):
        assert part.hex() in doc
