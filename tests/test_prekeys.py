"""Prekeys and envelope version 2 (docs/PROTOCOL.md 6.5, 6.6) against tests/vectors/prekeys-v2.json.

Prekeys and their signatures are reproduced byte for byte; envelopes are
opened. Each failure the spec names has its own test, and the deletion rule
(a one-time key is gone once tried, a forgery burns nothing) is checked on
the store the opener uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecomm.crypto import envelope as E
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.errors import (
    DecryptError,
    FormatError,
    IntegrityError,
    NoPrekeyError,
    PrekeySignatureError,
    ReplayedPrekeyError,
    SecurecommError,
    SignatureError,
    UnknownSenderError,
    VersionError,
)
from tests.vectorkeys import identity_from_raw, outcomes_v2

VEC = json.loads((Path(__file__).parent / "vectors" / "prekeys-v2.json").read_text())
DEVICE = identity_from_raw(VEC["device"])
SENDER = identity_from_raw(VEC["sender"])


def privates() -> list[K.PrivatePrekey]:
    return [K.PrivatePrekey.from_raw(p["kind"], p["prekey_id"], DEVICE.kem, bytes.fromhex(p["private"]),
                                     p["created_ms"]) for p in VEC["prekeys"]]


def store() -> K.MemoryPrekeys:
    return K.MemoryPrekeys(privates())


def expect(outcome: str, action: Any) -> Any:
    if outcome == "ok":
        return action()
    with pytest.raises(SecurecommError) as e:
        action()
    assert type(e.value) is outcomes_v2()[outcome], f"expected {outcome!r}, got {type(e.value).__name__}"
    return None


# -- vectors ------------------------------------------------------------------------------
def test_identities_match():
    assert DEVICE.public.line == VEC["device_identity"]
    assert SENDER.public.line == VEC["sender_identity"]


@pytest.mark.parametrize("case", VEC["prekeys"], ids=lambda c: f"{c['kind']}-{c['prekey_id']}")
def test_prekey_vector_reproduces(case):
    priv = K.PrivatePrekey.from_raw(case["kind"], case["prekey_id"], DEVICE.kem, bytes.fromhex(case["private"]),
                                    case["created_ms"])
    assert priv.raw.hex() == case["private"]
    signed = priv.sign(DEVICE)
    assert signed.signed_part.hex() == case["signed"] and signed.signature.hex() == case["signature"]
    decoded = K.Prekey.decode(bytes.fromhex(case["encoded"]))
    assert decoded == signed
    decoded.verify(DEVICE.public)


@pytest.mark.parametrize("case", VEC["envelopes"], ids=lambda c: c["name"])
def test_envelope_vector_opens(case):
    keys = store()
    opened = keys.open(bytes.fromhex(case["envelope"]), DEVICE, SENDER.public)
    assert opened.body.hex() == case["body"]
    assert opened.header.msg_id.hex() == case["msg_id"] and opened.header.timestamp_ms == case["timestamp_ms"]
    assert opened.without_one_time_key is case["without_one_time_key"]


@pytest.mark.parametrize("case", VEC["negative"], ids=lambda c: c["name"])
def test_negative_vectors(case):
    keys = store()

    def run() -> None:
        if "prekey" in case:
            K.Prekey.decode(bytes.fromhex(case["prekey"])).verify(DEVICE.public)
        elif "batch" in case:
            K.verify_batch(DEVICE.public, [bytes.fromhex(b) for b in case["batch"]], kind=K.ONE_TIME,
                           seen=lambda _: False)
        else:
            if case.get("open_twice"):
                keys.open(bytes.fromhex(case["envelope"]), DEVICE, SENDER.public)
            keys.open(bytes.fromhex(case["envelope"]), DEVICE, SENDER.public)

    expect(case["expect"], run)


# -- one named test per failure --------------------------------------------------------------
def _fresh(kem: str = "x25519") -> tuple[PrivateIdentity, K.MemoryPrekeys, list[K.Prekey]]:
    device = PrivateIdentity.generate(kem)
    batch = K.generate_batch(device, 1, 3)
    return device, K.MemoryPrekeys(batch), [p.sign(device) for p in batch]


def test_bad_prekey_signature_refused():
    device, _, signed = _fresh()
    raw = bytearray(signed[0].encode())
    raw[-1] ^= 1
    with pytest.raises(PrekeySignatureError):
        K.Prekey.decode(bytes(raw)).verify(device.public)
    with pytest.raises(PrekeySignatureError):  # the whole upload is refused
        K.verify_batch(device.public, [signed[1].encode(), bytes(raw)], kind=K.ONE_TIME, seen=lambda _: False)


def test_prekey_of_another_device_refused_at_sealing():
    _, _, signed = _fresh()
    other = PrivateIdentity.generate("x25519")
    with pytest.raises(PrekeySignatureError):
        K.seal_v2(b"x", SENDER, other.public, signed[0])


def test_replayed_prekey_id_refused():
    device, keys, signed = _fresh()
    env = K.seal_v2(b"once", SENDER, device.public, signed[0])
    assert keys.open(env, device, SENDER.public).body == b"once"
    assert keys.get(K.ONE_TIME, 1) is None  # deleted once used
    with pytest.raises(ReplayedPrekeyError):
        keys.open(env, device, SENDER.public)


def test_upload_reusing_an_id_is_a_replay():
    device, _, signed = _fresh()
    with pytest.raises(ReplayedPrekeyError):
        K.verify_batch(device.public, [p.encode() for p in signed], kind=K.ONE_TIME, seen=lambda i: i == 2)


def test_version_1_envelope_refused_by_name():
    device, keys, _ = _fresh()
    v1 = E.seal(b"old", SENDER, device.public)
    with pytest.raises(VersionError) as e:
        keys.open(v1, device, SENDER.public)
    assert "version 1" in e.value.message and "forward secrecy" in e.value.message
    with pytest.raises(VersionError):  # and the old reader names version 2 as unsupported
        E.parse(K.seal_v2(b"new", SENDER, device.public, None))


def test_long_term_key_refused_for_messages():
    device, keys, _ = _fresh()
    env = K.seal_v2(b"file", SENDER, device.public, None)
    with pytest.raises(NoPrekeyError):
        keys.open(env, device, SENDER.public)
    # an offline file may be sealed to the identity
    assert K.open_v2(env, device, SENDER.public, keys.get, require_prekey=False).body == b"file"


def test_forgery_does_not_burn_a_prekey():
    device, keys, signed = _fresh()
    raw = bytearray(K.seal_v2(b"x", SENDER, device.public, signed[0]))
    raw[-1] ^= 1
    with pytest.raises(SignatureError):
        keys.open(bytes(raw), device, SENDER.public)
    assert keys.get(K.ONE_TIME, 1) is not None


def test_failed_decryption_still_deletes_the_one_time_key():
    device, keys, signed = _fresh()
    raw = bytearray(K.seal_v2(b"secret", SENDER, device.public, signed[0]))
    raw[K.HEADER_SIZE + 6 + 40] ^= 1  # inside the ciphertext, then re-signed: only the sender could do this
    signed_part = bytes(raw[:-64])
    forged = signed_part + SENDER.sign(K.SIGN_LABEL + signed_part)
    with pytest.raises(DecryptError):
        keys.open(forged, device, SENDER.public)
    assert keys.get(K.ONE_TIME, 1) is None


def test_last_resort_marks_the_message_and_survives_use():
    device = PrivateIdentity.generate("x25519")
    last = K.PrivatePrekey.generate(K.LAST_RESORT, 9, device.kem)
    keys = K.MemoryPrekeys([last])
    for body in (b"a", b"b"):
        opened = keys.open(K.seal_v2(body, SENDER, device.public, last.sign(device)), device, SENDER.public)
        assert opened.body == body and opened.without_one_time_key
    assert keys.get(K.LAST_RESORT, 9) is last


def test_kind_is_bound_by_the_signature():
    device, keys, signed = _fresh()
    keys.add(K.PrivatePrekey(K.LAST_RESORT, 1, device.kem, keys.get(K.ONE_TIME, 1).parts, 0))
    raw = bytearray(K.seal_v2(b"x", SENDER, device.public, signed[0]))
    raw[100] = K.LAST_RESORT  # a server trying to hide that a one-time key was used, or the reverse
    with pytest.raises(SignatureError):
        keys.open(bytes(raw), device, SENDER.public)


def test_last_resort_grace_period():
    assert not K.expired_last_resort(0, K.LAST_RESORT_GRACE_MS - 1)
    assert K.expired_last_resort(0, K.LAST_RESORT_GRACE_MS)


def test_batch_limits_and_sizes():
    device = PrivateIdentity.generate("mlkem768-x25519")
    batch = K.generate_batch(device, 1, K.MAX_BATCH)
    encoded = [p.sign(device).encode() for p in batch]
    assert sum(map(len, encoded)) == 129_800  # docs/PROTOCOL.md 6.5
    assert len(K.verify_batch(device.public, encoded, kind=K.ONE_TIME, seen=lambda _: False)) == K.MAX_BATCH
    with pytest.raises(FormatError):
        K.verify_batch(device.public, [*encoded, encoded[0]], kind=K.ONE_TIME, seen=lambda _: False)
    with pytest.raises(FormatError):  # a last-resort key where one-time keys were announced
        K.verify_batch(device.public, [K.PrivatePrekey.generate(K.LAST_RESORT, 500, device.kem).sign(device)
                                       .encode()], kind=K.ONE_TIME, seen=lambda _: False)
    with pytest.raises(FormatError):
        K.generate_batch(device, 1, K.MAX_BATCH + 1)


@pytest.mark.parametrize("kem", ["x25519", "p256", "mlkem768-x25519"])
def test_every_suite_round_trips(kem):
    device, keys, signed = _fresh(kem)
    opened = keys.open(K.seal_v2(b"hello " + kem.encode(), SENDER, device.public, signed[2]), device, SENDER.public)
    assert opened.body == b"hello " + kem.encode() and opened.header.prekey_id == 3
    raw = keys.keys[(K.ONE_TIME, 1)].raw
    assert K.PrivatePrekey.from_raw(K.ONE_TIME, 1, kem, raw, 0).public_bytes == signed[0].kem_public


# -- parsers ---------------------------------------------------------------------------------------
def test_every_truncation_is_a_format_error():
    env = bytes.fromhex(VEC["envelopes"][0]["envelope"])
    for n in range(0, len(env), 7):
        with pytest.raises(FormatError):
            K.parse_v2(env[:n])
    with pytest.raises(FormatError):
        K.parse_v2(env + b"\x00")
    pk = bytes.fromhex(VEC["prekeys"][0]["encoded"])
    for n in range(0, len(pk), 5):
        with pytest.raises(FormatError):
            K.Prekey.decode(pk[:n])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_parse_or_integrity_error(data):
    for parse in (K.parse_v2, K.Prekey.decode):
        try:
            parse(b"SCE1\x02" + data if parse is K.parse_v2 else data)
        except IntegrityError:
            continue


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=1, max_value=255))
def test_mutated_envelope_never_opens(pos, flip):
    raw = bytearray(bytes.fromhex(VEC["envelopes"][0]["envelope"]))
    raw[pos % len(raw)] ^= flip
    with pytest.raises((IntegrityError, UnknownSenderError)):
        store().open(bytes(raw), DEVICE, SENDER.public)


def test_sender_must_be_known():
    device, keys, signed = _fresh()
    env = K.seal_v2(b"x", SENDER, device.public, signed[0])
    stranger: PublicIdentity = PrivateIdentity.generate("x25519").public
    with pytest.raises(UnknownSenderError):
        keys.open(env, device, stranger)
    assert keys.get(K.ONE_TIME, 1) is not None
