"""Safety numbers: 60 digits from two users' user keys (docs/PROTOCOL.md 6.8).

Signal's NumericFingerprint, version 0, 5200 iterations: for each side

    h = version u16 || key || id;  5200 times: h = SHA-512(h || key)

and the first 30 bytes of h, as six 40-bit big-endian numbers mod 100000,
give 30 digits. The two halves are put in sorted order, so both people see
the same 60 digits. The iterations make a second key with the same digits
cost 2^112 work or so instead of 2^100 (Signal's figure); the user name as
`id` keeps one key from matching another person's number.
"""

from __future__ import annotations

import hashlib

from securecomm.crypto.devices import UserPublicKey, check_user

FINGERPRINT_VERSION = 0
ITERATIONS = 5200
DIGITS_PER_SIDE = 30


def iterate(user: str, key: UserPublicKey, iterations: int = ITERATIONS) -> bytes:
    """The 64-byte hash of one side after `iterations` rounds."""
    h = FINGERPRINT_VERSION.to_bytes(2, "big") + key.raw + check_user(user)
    for _ in range(iterations):
        h = hashlib.sha512(h + key.raw).digest()
    return h


def side_digits(user: str, key: UserPublicKey) -> str:
    h = iterate(user, key)
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(me: str, my_key: UserPublicKey, them: str, their_key: UserPublicKey) -> str:
    """The 60 digits both sides compute (the smaller half first, as strings)."""
    a, b = side_digits(me, my_key), side_digits(them, their_key)
    return a + b if a <= b else b + a


def format_number(number: str) -> str:
    """12 groups of 5 digits, 4 groups to a line."""
    groups = [number[i : i + 5] for i in range(0, len(number), 5)]
    return "\n".join(" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4))
