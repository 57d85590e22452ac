"""User keys, device certificates, signed device lists and pairing codes (docs/PROTOCOL.md 6.2-6.4).

Vectors in tests/vectors/devices-v2.json are reproduced byte for byte; each
failure the spec names has its own test below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.errors import (
    FormatError,
    IntegrityError,
    NotUserKeyError,
    PairingExpiredError,
    PairingUnknownError,
    PairingUsedError,
    SecurecommError,
    SignatureError,
    StaleDeviceListError,
)
from tests.vectorkeys import identity_from_raw, outcomes_v2

VEC = json.loads((Path(__file__).parent / "vectors" / "devices-v2.json").read_text())
USER = VEC["user"]
UK = D.UserKey.from_seed(bytes.fromhex(VEC["user_key"]["ed25519"]))
OTHER = D.UserKey.from_seed(bytes.fromhex(VEC["other_user_key"]["ed25519"]))
DEVICES = [identity_from_raw(d["keys"]) for d in VEC["devices"]]


def expect(outcome: str, action: Any) -> None:
    if outcome == "ok":
        action()
        return
    with pytest.raises(SecurecommError) as e:
        action()
    assert type(e.value) is outcomes_v2()[outcome], f"expected {outcome!r}, got {type(e.value).__name__}"


# -- vectors ---------------------------------------------------------------------------
def test_user_key_vector():
    assert UK.public.raw.hex() == VEC["user_key"]["public"]
    assert UK.public.line == VEC["user_key"]["line"]
    assert D.UserPublicKey.from_line(UK.public.line) == UK.public
    assert UK.public.fingerprint_text == VEC["user_key"]["fingerprint"]


@pytest.mark.parametrize("case", VEC["certs"], ids=lambda c: c["name"])
def test_certificate_vector_reproduces(case):
    device = DEVICES[case["device"]]
    assert device.public.line == VEC["devices"][case["device"]]["identity"]
    cert = D.DeviceCert.sign(UK, USER, device.public, case["name"], case["added_ms"])
    assert cert.signed_part.hex() == case["signed"]
    assert cert.signature.hex() == case["signature"]
    decoded = D.DeviceCert.decode(bytes.fromhex(case["encoded"]))
    assert decoded == cert and decoded.encode().hex() == case["encoded"]
    decoded.verify(USER, UK.public)
    assert decoded.device_id.hex() == VEC["devices"][case["device"]]["device_id"]


@pytest.mark.parametrize("case", VEC["lists"], ids=lambda c: str(c["counter"]))
def test_list_vector_reproduces(case):
    ids = [bytes.fromhex(i) for i in case["devices"]]
    dlist = D.DeviceList.sign(UK, USER, case["counter"], case["issued_ms"], ids)
    assert dlist.signed_part.hex() == case["signed"] and dlist.signature.hex() == case["signature"]
    decoded = D.DeviceList.decode(bytes.fromhex(case["encoded"]))
    assert decoded == dlist
    decoded.verify(USER, UK.public)


@pytest.mark.parametrize("case", VEC["negative"], ids=lambda c: c["name"])
def test_negative_vectors(case):
    def run() -> None:
        if "cert" in case:
            D.DeviceCert.decode(bytes.fromhex(case["cert"])).verify(USER, UK.public)
            return
        last = D.DeviceList.decode(bytes.fromhex(case["last"])) if "last" in case else None
        D.DeviceList.decode(bytes.fromhex(case["list"])).verify(USER, UK.public, last=last)

    expect(case["expect"], run)


@pytest.mark.parametrize("check", VEC["pairing"]["checks"], ids=lambda c: c["expect"])
def test_pairing_vectors(check):
    p = VEC["pairing"]
    assert D.code_digest(p["user"], p["code"]).hex() == p["digest"]
    pending = D.PendingPairing.start(p["user"], p["code"], p["started_ms"])
    assert pending.expires_ms == p["expires_ms"]
    pending.used = check.get("used", False)
    expect(check["expect"], lambda: pending.check(p["user"], check["typed"], check["now_ms"]))


# -- one named test per failure --------------------------------------------------------------
def _list(key: D.UserKey, counter: int = 1) -> D.DeviceList:
    return D.DeviceList.sign(key, USER, counter, 0, [d.public.fingerprint for d in DEVICES])


def test_bad_signature_on_list_fails():
    raw = bytearray(_list(UK).encode())
    raw[-1] ^= 1
    with pytest.raises(SignatureError) as e:
        D.DeviceList.decode(bytes(raw)).verify(USER, UK.public)
    assert type(e.value) is SignatureError


def test_bad_signature_on_certificate_fails():
    raw = bytearray(D.DeviceCert.sign(UK, USER, DEVICES[0].public, "laptop", 0).encode())
    raw[-40] ^= 0x80
    with pytest.raises(SignatureError):
        D.DeviceCert.decode(bytes(raw)).verify(USER, UK.public)


def test_list_not_signed_by_the_user_key_fails():
    with pytest.raises(NotUserKeyError):
        _list(OTHER).verify(USER, UK.public)


def test_list_for_another_user_fails():
    with pytest.raises(NotUserKeyError):
        D.DeviceList.sign(UK, "bob", 1, 0, [DEVICES[0].public.fingerprint]).verify(USER, UK.public)


def test_replayed_older_list_is_stale():
    new, old = _list(UK, 5), _list(UK, 4)
    new.verify(USER, UK.public, last=new)  # the same list again is fine (a refetch)
    with pytest.raises(StaleDeviceListError):
        old.verify(USER, UK.public, last=new)
    with pytest.raises(StaleDeviceListError):  # same counter, other contents
        D.DeviceList.sign(UK, USER, 5, 0, [DEVICES[0].public.fingerprint]).verify(USER, UK.public, last=new)


def test_expired_pairing_code_refused():
    code = D.new_pairing_code()
    pending = D.PendingPairing.start(USER, code, 1000)
    with pytest.raises(PairingExpiredError):
        pending.consume(USER, code, 1000 + D.CODE_TTL_MS)
    assert not pending.used


def test_used_pairing_code_refused():
    code = D.new_pairing_code()
    pending = D.PendingPairing.start(USER, code, 0)
    pending.consume(USER, code, 1)
    with pytest.raises(PairingUsedError):
        pending.consume(USER, code, 2)


def test_pairing_code_of_another_account_is_unknown():
    code = D.new_pairing_code()
    with pytest.raises(PairingUnknownError):
        D.PendingPairing.start(USER, code, 0).check("bob", code, 1)


def test_pairing_codes_are_fresh_and_readable():
    codes = {D.new_pairing_code() for _ in range(50)}
    assert len(codes) == 50
    for code in codes:
        assert len(code) == 11 and code[5] == "-"
        assert D.normalize_code(code.lower().replace("-", " ")) == code.replace("-", "")
    assert D.normalize_code("0O1IL-aaaaa") == "00111AAAAA"
    with pytest.raises(PairingUnknownError):
        D.normalize_code("UUUUU-UUUUU")  # U is not in Crockford's alphabet


def test_too_many_devices_refused():
    with pytest.raises(FormatError):
        D.DeviceList.sign(UK, USER, 1, 0, [bytes([i]) * 32 for i in range(D.MAX_DEVICES + 1)])


def test_valid_devices_drops_a_certificate_not_on_the_list():
    certs = [D.DeviceCert.sign(UK, USER, d.public, f"d{i}", 0) for i, d in enumerate(DEVICES)]
    dlist = D.DeviceList.sign(UK, USER, 2, 0, [DEVICES[0].public.fingerprint])
    assert [c.device_id for c in D.valid_devices(USER, UK.public, dlist, certs)] == [DEVICES[0].public.fingerprint]


def test_user_key_hand_over_round_trip_and_mismatch():
    device = PrivateIdentity.generate("x25519")
    approver = DEVICES[0]
    sealed = K.seal_v2(D.encode_user_key_transfer(USER, UK), approver, device.public, None)
    opened = K.open_v2(sealed, device, approver.public, lambda *_: None, require_prekey=False)
    assert D.decode_user_key_transfer(opened.body, USER, UK.public).seed == UK.seed
    with pytest.raises(NotUserKeyError):
        D.decode_user_key_transfer(opened.body, USER, OTHER.public)
    with pytest.raises(NotUserKeyError):
        D.decode_user_key_transfer(opened.body, "bob", UK.public)


def test_device_name_rules():
    D.DeviceCert.sign(UK, USER, DEVICES[0].public, "é" * 32, 0)
    for bad in ("", "x" * 65, "tab\there", "esc\x1b[2J", "lone \ud800 surrogate"):  # the last: once an internal error
        with pytest.raises(FormatError):
            D.DeviceCert.sign(UK, USER, DEVICES[0].public, bad, 0)


# -- parsers: parse or raise an integrity error, never anything else ------------------------------
@pytest.mark.parametrize("which", ["cert", "list"])
def test_every_truncation_is_a_format_error(which):
    raw = bytes.fromhex(VEC["certs"][1]["encoded"] if which == "cert" else VEC["lists"][0]["encoded"])
    decode = D.DeviceCert.decode if which == "cert" else D.DeviceList.decode
    for n in range(len(raw)):
        with pytest.raises(FormatError):
            decode(raw[:n])
    with pytest.raises(FormatError):
        decode(raw + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["cert", "list"]))
def test_random_bytes_parse_or_integrity_error(data, which):
    decode = D.DeviceCert.decode if which == "cert" else D.DeviceList.decode
    try:
        obj = decode(data)
    except IntegrityError:
        return
    assert obj.encode() == data  # parse-then-serialise returns the input exactly


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1370), st.integers(min_value=1, max_value=255))
def test_mutated_certificate_never_verifies(pos, flip):
    raw = bytearray(bytes.fromhex(VEC["certs"][1]["encoded"]))
    raw[pos] ^= flip
    with pytest.raises(IntegrityError):
        D.DeviceCert.decode(bytes(raw)).verify(USER, UK.public)


def test_identity_in_certificate_is_the_device():
    cert = D.DeviceCert.decode(bytes.fromhex(VEC["certs"][0]["encoded"]))
    assert cert.device == PublicIdentity.from_line(VEC["devices"][0]["identity"])


def test_a_contact_refuses_a_different_list_with_the_counter_already_seen(tmp_path):
    """The attacker's check: after a restore, a second list 3 naming a removed device was accepted
    (client/pins.py kept only the counter), and a message was sealed to that device."""
    from securecomm.client.pins import Pins

    ids = [d.public.fingerprint for d in DEVICES[:2]]
    first = D.DeviceList.sign(UK, USER, 3, 0, sorted(ids[:1]))
    other = D.DeviceList.sign(UK, USER, 3, 0, sorted(ids))
    pins = Pins.load(tmp_path / "pins.json")
    pins.devices(USER, UK.public, first, [])
    pins.devices(USER, UK.public, first, [])  # the same list again is a refetch: fine
    with pytest.raises(StaleDeviceListError, match="differs from the list 3 seen before"):
        Pins.load(tmp_path / "pins.json").devices(USER, UK.public, other, [])  # kept across runs
    newer = D.DeviceList.sign(UK, USER, 4, 0, sorted(ids))
    assert Pins.load(tmp_path / "pins.json").devices(USER, UK.public, newer, []) == []
    assert Pins.load(tmp_path / "pins.json").get(USER).counter == 4


def test_the_hint_for_a_verified_contacts_new_key_offers_what_works(tmp_path):
    """The new-user check: the STOP's hint ended '... securecomm contacts trust bob', which is then
    refused for a verified contact ('it is trusted only with its fingerprint')."""
    from securecomm.client.pins import Pins, VerifiedKeyChangedError
    from securecomm.errors import ChangedKeyError

    ids = [DEVICES[0].public.fingerprint]
    pins = Pins.load(tmp_path / "pins.json")
    pins.devices(USER, UK.public, D.DeviceList.sign(UK, USER, 1, 0, ids), [])
    with pytest.raises(ChangedKeyError) as plain:
        pins.devices(USER, OTHER.public, D.DeviceList.sign(OTHER, USER, 1, 0, ids), [])
    assert (plain.value.hint or "").endswith(f"securecomm contacts trust {USER}")
    pins.mark_verified(USER)
    with pytest.raises(VerifiedKeyChangedError) as loud:
        pins.devices(USER, OTHER.public, D.DeviceList.sign(OTHER, USER, 1, 0, ids), [])
    assert f"securecomm contacts trust {USER} --fingerprint FP" in (loud.value.hint or "")
