"""Safety numbers (docs/PROTOCOL.md 6.8) against tests/vectors/safety-v2.json and the spec's own words."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from securecomm.crypto import safety as S
from securecomm.crypto.devices import UserKey, UserPublicKey
from securecomm.errors import FormatError

VEC = json.loads((Path(__file__).parent / "vectors" / "safety-v2.json").read_text())


def _key(side: str) -> UserPublicKey:
    return UserPublicKey(bytes.fromhex(VEC[side]["user_key"]))


def _spec_side(user: str, key: bytes) -> str:
    """Section 6.8 written out again with nothing from securecomm: a second implementation."""
    h = b"\x00\x00" + key + user.encode()
    for _ in range(5200):
        h = hashlib.sha512(h + key).digest()
    return "".join(str(int.from_bytes(h[i : i + 5], "big") % 100000).zfill(5) for i in range(0, 30, 5))


def test_vector_reproduces():
    a, b = VEC["a"], VEC["b"]
    assert S.iterate(a["user"], _key("a"), 1).hex() == a["first_iteration"]
    assert S.side_digits(a["user"], _key("a")) == a["digits"]
    assert S.side_digits(b["user"], _key("b")) == b["digits"]
    assert S.safety_number(a["user"], _key("a"), b["user"], _key("b")) == VEC["safety_number"]


def test_matches_the_spec_text():
    for side in ("a", "b"):
        assert _spec_side(VEC[side]["user"], bytes.fromhex(VEC[side]["user_key"])) == VEC[side]["digits"]


def test_same_number_on_both_sides_and_sixty_digits():
    a, b = VEC["a"], VEC["b"]
    mine = S.safety_number(a["user"], _key("a"), b["user"], _key("b"))
    theirs = S.safety_number(b["user"], _key("b"), a["user"], _key("a"))
    assert mine == theirs and len(mine) == 60 and mine.isdigit()


def test_a_new_user_key_changes_the_number():
    a, b = VEC["a"], VEC["b"]
    before = S.safety_number(a["user"], _key("a"), b["user"], _key("b"))
    after = S.safety_number(a["user"], _key("a"), b["user"], UserKey.generate().public)
    assert before[:30] == a["digits"] or before[30:] == a["digits"]
    assert after != before


def test_the_name_is_part_of_the_number():
    assert S.side_digits("alice", _key("a")) != S.side_digits("alicf", _key("a"))


def test_format_is_twelve_groups_in_three_lines():
    shown = S.format_number(VEC["safety_number"])
    lines = shown.splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 4 for line in lines)
    assert shown.replace("\n", "").replace(" ", "") == VEC["safety_number"]


def test_invalid_user_name_refused():
    with pytest.raises(FormatError):
        S.side_digits("Alice\n", _key("a"))
