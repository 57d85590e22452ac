"""The version-2 stream (docs/PROTOCOL.md 2.6.1): files through the server to every device of an account.
Vectors from tests/vectors/stream-v2.json (python -m tests.vectors.make_stream_vectors_v2), reproduced byte
for byte, one named negative case per failure, and the properties the design rests on."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from securecomm.crypto import devices as D
from securecomm.crypto import stream as S
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import FormatError, UnknownSenderError, WrongRecipientError
from tests.vectorkeys import identity_from_raw, outcomes
from tests.vectors import make_stream_vectors_v2 as G

VECTORS = json.loads((Path(__file__).parent / "vectors" / "stream-v2.json").read_text())
SENDER = identity_from_raw(VECTORS["sender"])


def _open(raw: bytes, case: dict) -> bytes:
    key = case.get("file_key", VECTORS["file_key"])
    account = bytes.fromhex(case.get("account", VECTORS["account"]))
    opening = S.open_stream([raw], None, SENDER.public, file_key=None if key is None else bytes.fromhex(key),
                            account=account)
    return b"".join(opening)


def test_inputs_derive_as_specified():
    assert SENDER.public.line == VECTORS["sender_identity"]
    seed = bytes.fromhex(VECTORS["user_key_seed"])
    assert D.UserKey.from_seed(seed).public.fingerprint.hex() == VECTORS["account"]
    assert {k: v.encode() for k, v in VECTORS["labels"].items()} == vars(S.LABELS[S.VERSION_DETACHED])


def test_every_step_reproduced():
    assert G._steps(SENDER) == VECTORS["steps"]
    preamble = bytes.fromhex(VECTORS["steps"]["preamble"])
    assert len(preamble) == 102 and preamble[:4] == b"SCS1" and preamble[4] == 2
    assert preamble[5:7] == b"\x00\x00" and preamble[100:] == b"\x00\x00"  # no KEM, enc_len 0
    assert preamble[68:100].hex() == VECTORS["account"]
    assert preamble[36:68] == SENDER.public.fingerprint


@pytest.mark.parametrize("case", VECTORS["streams"], ids=lambda c: c["name"])
def test_stream_vector(case):
    if "stream_b64" not in case:  # `multi`: reproduced by digest
        body = G.pattern(case["body_length"])
        raw = G._seal(body, SENDER)
        assert sha256(raw).hex() == case["stream_sha256"] and len(raw) == case["stream_length"]
        assert sha256(_open(raw, case)).hex() == case["body_sha256"]
        return
    raw = base64.b64decode(case["stream_b64"])
    if case["expect"] == "ok":
        assert raw == G._seal(bytes.fromhex(case["body"]), SENDER)  # deterministic: byte for byte
        assert len(raw) == S.sealed_size_detached(len(bytes.fromhex(case["body"])))
        assert _open(raw, case).hex() == case["body"]
        return
    with pytest.raises(outcomes()[case["expect"]]):
        _open(raw, case)


def test_vectors_cover_each_failure():
    expects = {c["expect"] for c in VECTORS["streams"]}
    assert expects == {"ok", "decryption failed", "wrong recipient", "unknown suite", "bad format", "bad signature",
                       "truncated"}


def test_no_long_term_key_opens_a_version_2_stream():
    """The stream holds nothing sealed to a public key: the recipient's identity (or anyone's) gets a
    named refusal, never a file key (what made the old form fall to a stolen device key)."""
    raw = base64.b64decode(VECTORS["streams"][0]["stream_b64"])
    for kem in ("x25519", "mlkem768-x25519"):
        with pytest.raises(WrongRecipientError, match="key travels in a file notice"):
            S.open_stream([raw], PrivateIdentity.generate(kem), SENDER.public)
    assert bytes.fromhex(VECTORS["file_key"]) not in raw


def test_a_version_1_stream_still_opens_with_the_device_key_and_agrees_with_its_notice():
    """Notices from before this change carry a version-1 stream: the fetching device still opens it
    with its own key (open_feed passes the notice's key and account; version 1 ignores them)."""
    me = PrivateIdentity.generate("x25519")
    key = os.urandom(32)
    raw = b"".join(S.seal([b"old form"], SENDER, me.public, file_key=key))
    opening = S.open_stream([raw], me, SENDER.public, file_key=os.urandom(32), account=os.urandom(32))
    assert b"".join(opening) == b"old form" and opening.file_key == key  # the caller compares it with the notice


@pytest.mark.parametrize("size", [0, 1, S.CHUNK_SIZE, S.CHUNK_SIZE + 1, 3 * S.CHUNK_SIZE + 5])
def test_round_trip_and_size(size):
    body, key, account = os.urandom(size), os.urandom(32), os.urandom(32)
    raw = b"".join(S.seal_detached([body] if body else [], SENDER, account, key))
    assert len(raw) == S.sealed_size_detached(size)
    assert b"".join(S.open_stream([raw], None, SENDER.public, file_key=key, account=account)) == body


def test_a_version_2_stream_signed_by_another_device_is_refused():
    other = PrivateIdentity.generate("x25519")
    key, account = os.urandom(32), os.urandom(32)
    raw = b"".join(S.seal_detached([b"x"], other, account, key))
    with pytest.raises(UnknownSenderError):
        S.open_stream([raw], None, SENDER.public, file_key=key, account=account)


def test_bad_arguments_to_seal():
    with pytest.raises(FormatError, match="32-byte user key fingerprint"):
        list(S.seal_detached([b"x"], SENDER, bytes(31), os.urandom(32)))
    with pytest.raises(FormatError, match="file key must be 32 bytes"):
        list(S.seal_detached([b"x"], SENDER, bytes(32), bytes(16)))
