"""Regenerate envelope-suites-v1.json, signatures-v1.json and room-v1.json (test-only keys).

Run from the repository root:  python -m tests.vectors.make_vectors_v1

Keys are derived from fixed labels (tests/vectorkeys.py), so they, the Ed25519
signatures and the room messages come out byte for byte the same every time.
HPKE encapsulation is randomised, so envelopes differ on each run: a second
implementation checks them by *opening* them, not by reproducing them.
See docs/PROTOCOL.md section 5.7 for every field.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from securecomm.crypto import envelope as E
from securecomm.crypto import room as R
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from securecomm.wire import protocol as P
from tests.vectorkeys import identity_from_raw, raw_keys

HERE = Path(__file__).parent
MSG_ID = bytes(range(16))
TIMESTAMP_MS = 1_764_115_200_000  # 2025-11-26T00:00:00Z
NOTE = "test-only keys, never use them; see docs/PROTOCOL.md 5.7"


def _who(label: str, kem: str) -> tuple[dict[str, str], PrivateIdentity]:
    keys = raw_keys(label, kem)
    return keys, identity_from_raw(keys)


def _resign(raw: bytes, signer: PrivateIdentity) -> bytes:
    signed = raw[: -E.SIGNATURE_SIZE]
    return signed + signer.sign(E.SIGN_LABEL + signed)


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :]


def _wrong_digest(body: bytes, sender: PrivateIdentity, to: PrivateIdentity) -> bytes:
    """A sender that puts the wrong digest inside: signature and tag verify, the digest does not."""
    header = E.Header(to.kem, MSG_ID, TIMESTAMP_MS, sender.public.fingerprint, to.public.fingerprint).pack()
    sealed = E._SUITES[to.kem].encrypt(sha256(b"not the body") + body, to.public.hpke_key, info=E.INFO_LABEL + header)
    enc_len = E.ENC_SIZES[to.kem]
    signed = header + struct.pack(">HI", enc_len, len(sealed) - enc_len) + sealed
    return signed + sender.sign(E.SIGN_LABEL + signed)


def envelope_cases() -> list[dict[str, Any]]:
    _, alice = _who("alice", "x25519")
    _, mallory = _who("mallory", "x25519")
    body = b"hello from the test vectors"
    cases: list[dict[str, Any]] = []

    def case(name: str, to_keys: dict[str, str], raw: bytes, expect: str, sender: PrivateIdentity = alice,
             **extra: Any) -> None:
        cases.append({"name": name, "recipient": to_keys, "recipient_identity": identity_from_raw(to_keys).public.line,
                      "sender": sender.public.line, "envelope": raw.hex(), "expect": expect, **extra})

    for kem in ("mlkem768-x25519", "p256", "x25519"):
        keys, bob = _who(f"bob-{kem}", kem)
        raw = E.seal(body, alice, bob.public, msg_id=MSG_ID, timestamp_ms=TIMESTAMP_MS)
        case(f"ok {kem}", keys, raw, "ok", body=body.hex(), msg_id=MSG_ID.hex(), timestamp_ms=TIMESTAMP_MS)
        enc_at = E.HEADER_SIZE + 6
        case(f"decryption failed {kem} (enc changed, re-signed)", keys, _resign(_flip(raw, enc_at + 1), alice),
             "decryption failed")
    keys, bob = _who("bob-x25519", "x25519")
    carol_keys, _ = _who("carol-x25519", "x25519")
    raw = E.seal(body, alice, bob.public, msg_id=MSG_ID, timestamp_ms=TIMESTAMP_MS)
    case("wrong recipient", carol_keys, raw, "wrong recipient")
    case("unknown sender", keys, raw, "unknown sender", sender=mallory)
    case("bad signature", keys, _flip(raw, len(raw) - 1), "bad signature")
    case("decryption failed (ciphertext changed, re-signed)", keys,
         _resign(_flip(raw, len(raw) - E.SIGNATURE_SIZE - 1), alice), "decryption failed")
    case("digest mismatch", keys, _wrong_digest(body, alice, bob), "digest mismatch")
    case("bad magic", keys, b"SCE2" + raw[4:], "not an envelope")
    case("reserved flags set", keys, raw[:11] + b"\x01" + raw[12:], "bad format")
    case("unknown suite (AES-128-GCM)", keys, raw[:9] + struct.pack(">H", 0x0001) + raw[11:], "unknown suite")
    return cases


def signature_cases() -> dict[str, Any]:
    _, server = _who("server", "mlkem768-x25519")
    user_keys, user = _who("alice", "x25519")
    _, mallory = _who("mallory", "x25519")
    challenge = bytes(range(32, 64))
    server_fp = server.public.fingerprint
    transcript = P.login_transcript(challenge, server_fp, "alice")
    login = {"signer": user_keys, "signer_identity": user.public.line, "challenge": challenge.hex(),
             "server_identity": server.public.line, "server_fingerprint": server_fp.hex(), "user": "Alice",
             "user_folded": "alice", "transcript": transcript.hex()}
    login_cases = [
        {**login, "name": "ok", "signature": user.sign(transcript).hex(), "expect": "ok"},
        {**login, "name": "user name not folded before signing",
         "signature": user.sign(P.login_transcript(challenge, server_fp, "Alice")).hex(), "expect": "bad signature"},
        {**login, "name": "signed for another challenge",
         "signature": user.sign(P.login_transcript(bytes(32), server_fp, "alice")).hex(), "expect": "bad signature"},
        {**login, "name": "signed by another key", "signature": mallory.sign(transcript).hex(),
         "expect": "bad signature"},
    ]
    body = b"hello from the test vectors"
    digest = sha256(body)
    receipt = P.delivered_transcript(MSG_ID, digest)
    delivered = {"signer": user_keys, "signer_identity": user.public.line, "msg_id": MSG_ID.hex(),
                 "body": body.hex(), "digest": digest.hex(), "transcript": receipt.hex()}
    delivered_cases = [
        {**delivered, "name": "ok", "signature": user.sign(receipt).hex(), "expect": "ok"},
        {**delivered, "name": "signed over another digest",
         "signature": user.sign(P.delivered_transcript(MSG_ID, sha256(b"other"))).hex(), "expect": "bad signature"},
    ]
    return {"note": NOTE, "login": login_cases, "delivered": delivered_cases}


def _room_message(room: str, body: bytes, me: PrivateIdentity, key: R.SenderKey, msg_id: bytes) -> dict[str, Any]:
    iteration, chain_before = key.iteration, key.chain_key
    message_key = R._chain_step(chain_before)[0]
    aead_key_nonce = R.HKDF(R.hashes.SHA256(), 44, salt=None, info=R.KEY_LABEL).derive(message_key)
    payload = R.encrypt(room, body, me, key, msg_id=msg_id, timestamp_ms=TIMESTAMP_MS)
    header = payload[: R._HEADER.size]
    return {"iteration": iteration, "chain_key": chain_before.hex(), "message_key": message_key.hex(),
            "aead_key": aead_key_nonce[:32].hex(), "nonce": aead_key_nonce[32:].hex(), "msg_id": msg_id.hex(),
            "timestamp_ms": TIMESTAMP_MS, "body": body.hex(), "aad": (R._room_prefix(room) + header).hex(),
            "payload": payload.hex()}


def room_cases() -> dict[str, Any]:
    keys, alice = _who("alice", "x25519")
    room = "lobby"
    key = R.SenderKey(bytes.fromhex("0a0b0c0d"), sha256(b"securecomm test vector/room chain key"))
    start = {"key_id": key.key_id.hex(), "chain_key": key.chain_key.hex(), "iteration": 0,
             "encoded": key.encode(room).hex()}
    first = _room_message(room, b"first message to the lobby", alice, key, bytes(range(16)))
    second = _room_message(room, b"second message", alice, key, bytes(range(16, 32)))
    payload = bytes.fromhex(second["payload"])
    tampered = payload[: R._HEADER.size] + bytes([payload[R._HEADER.size] ^ 1]) + payload[R._HEADER.size + 1 : -64]
    tampered += alice.sign(R._room_prefix(room) + tampered)
    negatives = [
        {"name": "read as another room", "room": "other", "payload": first["payload"], "expect": "bad signature"},
        {"name": "ciphertext changed, re-signed", "room": room, "payload": tampered.hex(),
         "expect": "decryption failed"},
    ]
    return {"note": NOTE, "room": room, "sender": keys, "sender_identity": alice.public.line, "sender_key": start,
            "messages": [{**first, "expect": "ok"}, {**second, "expect": "ok"}], "negative": negatives}


def _write(name: str, data: Any) -> None:
    (HERE / name).write_text(json.dumps(data, indent=1) + "\n")
    print("wrote", HERE / name)


def main() -> None:
    _write("envelope-suites-v1.json", {"note": NOTE, "cases": envelope_cases()})
    _write("signatures-v1.json", signature_cases())
    _write("room-v1.json", room_cases())


if __name__ == "__main__":
    main()
