"""tests/vectors/bodies-v2.json: what a version-2 envelope carries (docs/PROTOCOL.md 6.6), written and read
as the spec says, its writer checked against the account that lists the sending device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securecomm.client import devicemail as M
from securecomm.crypto.room import SenderKey, read_sender_key
from securecomm.errors import FormatError

VEC = json.loads((Path(__file__).parent / "vectors" / "bodies-v2.json").read_text())
#: A vector's error, as the words the reader's refusal carries (None: any FormatError, "bad format").
ERRORS = {"written by another account": "lists that device as", "another conversation": "another conversation",
          "no writer": "has none", "bad format": None}


def _refused(case: dict, fn, *args) -> None:
    with pytest.raises(FormatError) as e:
        fn(*args)
    words = ERRORS[case["error"]]
    assert words is None or words in e.value.message


@pytest.mark.parametrize("case", VEC["direct"]["encode"], ids=lambda c: c["body"][:40])
def test_a_direct_body_is_written_byte_for_byte(case):
    assert M.encode_body(case["writer"], case["conversation"], case["text"].encode()).hex() == case["body"]
    assert M.decode_body(bytes.fromhex(case["body"])) == (case["writer"], case["conversation"], case["text"].encode())


@pytest.mark.parametrize("case", VEC["direct"]["read"], ids=lambda c: c.get("note", c.get("error", "shows")))
def test_a_direct_body_is_read_and_checked(case):
    body = bytes.fromhex(case["body"])
    required = case.get("writer_required", False)
    if "shows" in case:
        assert M.read_body(body, case["sender"], case["reader"], required) == \
            (case["shows"]["conversation"], case["shows"]["text"].encode())
    else:
        _refused(case, M.read_body, body, case["sender"], case["reader"], required)


@pytest.mark.parametrize("case", VEC["sender_key"]["encode"], ids=lambda c: str(c["writer"]))
def test_a_sender_key_is_written_byte_for_byte(case):
    key = SenderKey(bytes.fromhex(case["key_id"]), bytes.fromhex(case["chain_key"]), case["iteration"])
    assert key.encode(case["room"], case["writer"]).hex() == case["body"]


@pytest.mark.parametrize("case", VEC["sender_key"]["read"], ids=lambda c: c.get("note", c.get("error", "takes")))
def test_a_sender_key_is_read_and_checked(case):
    body = bytes.fromhex(case["body"])
    if "takes" in case:
        room, key = read_sender_key(body, case["sender"])
        t = case["takes"]
        assert (room, key.key_id.hex(), key.chain_key.hex(), key.iteration) == \
            (t["room"], t["key_id"], t["chain_key"], t["iteration"])
    else:
        _refused(case, read_sender_key, body, case["sender"])


def test_the_vectors_include_the_misattribution_cases():
    """The spec-only client's finding (stop 26): a malicious server listed alice's device under dave, and
    bob's client showed alice's message as dave's with a tick. These vectors are that refusal."""
    for part in ("direct", "sender_key"):
        assert any(c.get("error") == "written by another account" and c["sender"] == "dave"
                   for c in VEC[part]["read"])
