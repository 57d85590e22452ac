"""tests/vectors/direct-body-v2.json: the body of a version-2 direct message (docs/PROTOCOL.md 6.6),
written and read as the spec says, its writer checked against the account that lists the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securecomm.client import devicemail as M
from securecomm.errors import FormatError

VEC = json.loads((Path(__file__).parent / "vectors" / "direct-body-v2.json").read_text())
#: A vector's error, as the words the reader's refusal carries (None: any FormatError, "bad format").
ERRORS = {"written by another account": "lists that device as", "another conversation": "another conversation",
          "bad format": None}


@pytest.mark.parametrize("case", VEC["encode"], ids=lambda c: c["body"][:40])
def test_a_body_is_written_byte_for_byte(case):
    assert M.encode_body(case["writer"], case["conversation"], case["text"].encode()).hex() == case["body"]
    assert M.decode_body(bytes.fromhex(case["body"])) == (case["writer"], case["conversation"], case["text"].encode())


@pytest.mark.parametrize("case", VEC["read"], ids=lambda c: c.get("note", c.get("error", "shows")))
def test_a_body_is_read_and_checked(case):
    body = bytes.fromhex(case["body"])
    if "shows" in case:
        assert M.read_body(body, case["sender"], case["reader"]) == \
            (case["shows"]["conversation"], case["shows"]["text"].encode())
        return
    with pytest.raises(FormatError) as e:
        M.read_body(body, case["sender"], case["reader"])
    words = ERRORS[case["error"]]
    assert words is None or words in e.value.message


def test_the_vectors_include_the_misattribution_case():
    """The spec-only client's finding (stop 26): a malicious server listed alice's device under dave, and
    bob's client showed alice's message as dave's with a tick. This vector is that refusal."""
    assert any(c.get("error") == "written by another account" and c["sender"] == "dave" for c in VEC["read"])
