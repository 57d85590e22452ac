"""Regenerate devices-v2.json, prekeys-v2.json and safety-v2.json (test-only keys).

Run from the repository root:  python -m tests.vectors.make_vectors_v2

Keys come from fixed labels (tests/vectorkeys.py); certificates, device lists,
prekeys, pairing digests and safety numbers are deterministic and must be
reproduced byte for byte. Envelopes use randomised HPKE: open them.
See docs/PROTOCOL.md section 6.11 for every field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from securecomm.crypto import devices as D
from securecomm.crypto import envelope as E
from securecomm.crypto import prekeys as K
from securecomm.crypto import safety as S
from securecomm.crypto.identity import PrivateIdentity
from tests.vectorkeys import _derive, identity_from_raw, raw_keys

HERE = Path(__file__).parent
NOTE = "test-only keys, never use them; see docs/PROTOCOL.md 6.11"
T0 = 1_764_115_200_000  # 2025-11-26T00:00:00Z
MSG_ID = bytes(range(16))


def user_key(label: str) -> D.UserKey:
    return D.UserKey.from_seed(_derive(label, "user-key", 32))


def _uk(key: D.UserKey) -> dict[str, str]:
    return {"ed25519": key.seed.hex(), "public": key.public.raw.hex(), "line": key.public.line,
            "fingerprint": key.public.fingerprint_text}


def _who(label: str, kem: str) -> tuple[dict[str, str], PrivateIdentity]:
    keys = raw_keys(label, kem)
    return keys, identity_from_raw(keys)


def _structure(obj: D.DeviceCert | D.DeviceList) -> dict[str, str]:
    return {"signed": obj.signed_part.hex(), "signature": obj.signature.hex(), "encoded": obj.encode().hex()}


def _forged_list(user: str, claimed: D.UserKey, signer: D.UserKey, devices: list[bytes]) -> bytes:
    """A list naming `claimed` as its user key but signed by `signer`."""
    good = D.DeviceList.sign(claimed, user, 3, T0, devices)
    return good.signed_part + signer.sign(D.LIST_LABEL + good.signed_part)


def devices_vectors() -> dict[str, Any]:
    uk, other = user_key("alice"), user_key("mallory")
    (k1, d1), (k2, d2) = _who("alice-laptop", "x25519"), _who("alice-phone", "mlkem768-x25519")
    c1 = D.DeviceCert.sign(uk, "alice", d1.public, "laptop", T0)
    c2 = D.DeviceCert.sign(uk, "alice", d2.public, "phone ☎", T0 + 60_000)
    l1 = D.DeviceList.sign(uk, "alice", 1, T0 + 60_000, [d1.public.fingerprint, d2.public.fingerprint])
    l2 = D.DeviceList.sign(uk, "alice", 2, T0 + 120_000, [d1.public.fingerprint])
    ids = sorted([d1.public.fingerprint, d2.public.fingerprint])
    unsorted = bytearray(l1.signed_part)
    start = len(l1.signed_part) - 64
    unsorted[start:] = ids[1] + ids[0]
    eleven = D.DeviceList._body("alice", uk.public.raw, 4, T0, tuple(bytes([i]) * 32 for i in range(10)))
    eleven = eleven[:-321] + bytes([11]) + b"".join(bytes([i]) * 32 for i in range(11))
    code = "7K3QD-M2XTA"
    return {
        "note": NOTE, "user": "alice", "user_key": _uk(uk), "other_user_key": _uk(other),
        "devices": [{"keys": k1, "identity": d1.public.line, "device_id": d1.public.fingerprint.hex()},
                    {"keys": k2, "identity": d2.public.line, "device_id": d2.public.fingerprint.hex()}],
        "certs": [{"device": 0, "name": "laptop", "added_ms": T0, **_structure(c1)},
                  {"device": 1, "name": "phone ☎", "added_ms": T0 + 60_000, **_structure(c2)}],
        "lists": [{"counter": 1, "issued_ms": T0 + 60_000, "devices": [i.hex() for i in l1.devices], **_structure(l1)},
                  {"counter": 2, "issued_ms": T0 + 120_000, "devices": [i.hex() for i in l2.devices],
                   **_structure(l2)}],
        "negative": [
            {"name": "list signed by another key", "list": _forged_list("alice", uk, other, ids).hex(),
             "expect": "bad signature"},
            {"name": "list under another user key", "list": D.DeviceList.sign(other, "alice", 5, T0, ids)
             .encode().hex(), "expect": "not signed by the user key"},
            {"name": "certificate under another user key", "cert": D.DeviceCert.sign(
                other, "alice", d1.public, "laptop", T0).encode().hex(), "expect": "not signed by the user key"},
            {"name": "list 1 after list 2", "list": l1.encode().hex(), "last": l2.encode().hex(),
             "expect": "stale device list"},
            {"name": "ids not sorted", "list": (bytes(unsorted) + uk.sign(D.LIST_LABEL + bytes(unsorted))).hex(),
             "expect": "bad format"},
            {"name": "eleven devices", "list": (eleven + uk.sign(D.LIST_LABEL + eleven)).hex(),
             "expect": "bad format"},
        ],
        "pairing": {
            "user": "alice", "code": code, "digest": D.code_digest("alice", code).hex(), "started_ms": T0,
            "expires_ms": T0 + D.CODE_TTL_MS,
            "checks": [
                {"typed": "7k3qd m2xta", "now_ms": T0 + 1, "expect": "ok"},
                {"typed": "7K3QDM2XTA", "now_ms": T0 + D.CODE_TTL_MS, "expect": "pairing code expired"},
                {"typed": "7K3QD-M2XTB", "now_ms": T0 + 1, "expect": "pairing code unknown"},
                {"typed": "7K3QD-M2XTA", "now_ms": T0 + 2, "used": True, "expect": "pairing code used"},
            ],
        },
    }


def _prekey_case(device: PrivateIdentity, kind: int, pid: int, label: str) -> tuple[dict[str, Any], K.PrivatePrekey]:
    keys = raw_keys(label, device.kem)
    raw = bytes.fromhex(keys.get("mlkem768", "") + keys["x25519"])
    priv = K.PrivatePrekey.from_raw(kind, pid, device.kem, raw, T0)
    signed = priv.sign(device)
    return {"kind": kind, "prekey_id": pid, "private": raw.hex(), "created_ms": T0, "signed": signed.signed_part.hex(),
            "signature": signed.signature.hex(), "encoded": signed.encode().hex()}, priv


def _resign(raw: bytes, signer: PrivateIdentity) -> bytes:
    signed = raw[:-64]
    return signed + signer.sign(K.SIGN_LABEL + signed)


def prekeys_vectors() -> dict[str, Any]:
    (dk, device), (sk, sender) = _who("bob-phone", "mlkem768-x25519"), _who("alice-laptop-2", "x25519")
    one, one_priv = _prekey_case(device, K.ONE_TIME, 1, "bob-phone/prekey-1")
    two, _ = _prekey_case(device, K.ONE_TIME, 2, "bob-phone/prekey-2")
    last, last_priv = _prekey_case(device, K.LAST_RESORT, 3, "bob-phone/prekey-3")
    pk1, pk3 = one_priv.sign(device), last_priv.sign(device)
    body = b"SCM2\x03bobhello with forward secrecy"
    env1 = K.seal_v2(body, sender, device.public, pk1, msg_id=MSG_ID, timestamp_ms=T0)
    env3 = K.seal_v2(body, sender, device.public, pk3, msg_id=MSG_ID, timestamp_ms=T0)
    env0 = K.seal_v2(body, sender, device.public, None, msg_id=MSG_ID, timestamp_ms=T0)
    v1 = E.seal(body, sender, device.public, msg_id=MSG_ID, timestamp_ms=T0)
    moved = bytearray(env1)
    moved[104] = 2  # prekey id 1 -> 2, not re-signed
    impostor_raw = bytes.fromhex(one["private"])
    forged = K.PrivatePrekey.from_raw(K.ONE_TIME, 4, device.kem, impostor_raw, T0).sign(sender_as(device))
    ok = {"body": body.hex(), "msg_id": MSG_ID.hex(), "timestamp_ms": T0}
    return {
        "note": NOTE, "device": dk, "device_identity": device.public.line, "sender": sk,
        "sender_identity": sender.public.line, "prekeys": [one, two, last],
        "envelopes": [{"name": "to a one-time prekey", "envelope": env1.hex(), "expect": "ok",
                       "without_one_time_key": False, **ok},
                      {"name": "to the last-resort prekey", "envelope": env3.hex(), "expect": "ok",
                       "without_one_time_key": True, **ok}],
        "negative": [
            {"name": "prekey signed by another device", "prekey": forged.encode().hex(),
             "expect": "bad prekey signature"},
            {"name": "one-time envelope opened a second time", "envelope": env1.hex(), "open_twice": True,
             "expect": "replayed prekey id"},
            {"name": "prekey id given twice in one upload", "batch": [one["encoded"], one["encoded"]],
             "expect": "replayed prekey id"},
            {"name": "version 1 envelope", "envelope": v1.hex(), "expect": "wrong version"},
            {"name": "sealed to the device identity", "envelope": env0.hex(), "expect": "no prekey"},
            {"name": "prekey id changed, not re-signed", "envelope": bytes(moved).hex(), "expect": "bad signature"},
            {"name": "prekey id changed and re-signed", "envelope": _resign(bytes(moved), sender).hex(),
             "expect": "decryption failed"},
        ],
    }


def sender_as(device: PrivateIdentity) -> PrivateIdentity:
    """Same suite and KEM keys as `device`, another signing key: a prekey it signs is not `device`'s."""
    return PrivateIdentity(device.kem, device.kem_parts,
                           ed25519.Ed25519PrivateKey.from_private_bytes(_derive("impostor", "ed25519", 32)))


def safety_vectors() -> dict[str, Any]:
    a, b = user_key("alice"), user_key("bob")
    first = S.iterate("alice", a.public, 1)
    return {"note": NOTE, "version": S.FINGERPRINT_VERSION, "iterations": S.ITERATIONS,
            "a": {"user": "alice", "user_key": a.public.raw.hex(), "first_iteration": first.hex(),
                  "digits": S.side_digits("alice", a.public)},
            "b": {"user": "bob", "user_key": b.public.raw.hex(), "digits": S.side_digits("bob", b.public)},
            "safety_number": S.safety_number("alice", a.public, "bob", b.public)}


def main() -> None:
    for name, build in (("devices-v2.json", devices_vectors), ("prekeys-v2.json", prekeys_vectors),
                        ("safety-v2.json", safety_vectors)):
        (HERE / name).write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
