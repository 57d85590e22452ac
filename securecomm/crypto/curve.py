"""Reference elliptic-curve arithmetic: P-256 (short Weierstrass) and X25519.

READ THIS FIRST: this module explains the mathematics and cross-checks the
library in tests. It is variable-time (its running time depends on the
scalar), so it is NEVER used on secret keys in the product path; securecomm
encrypts and signs only through `cryptography`.

P-256 is the curve y^2 = x^3 + a*x + b over the prime field GF(p) with
a = -3. Points are affine (x, y) tuples, with None as the point at infinity
(the group's identity element). The group law, from SEC 1 section 2.2.1:

    P + O = P
    P + (-P) = O                       (same x, opposite y)
    P + Q: s = (yQ - yP) / (xQ - xP);  x = s^2 - xP - xQ;  y = s(xP - x) - yP
    2P:    s = (3xP^2 + a) / (2yP);    x = s^2 - 2xP;      y = s(xP - x) - yP

Division is multiplication by the inverse mod p (Fermat: z^(p-2)). Scalar
multiplication k*P is double-and-add over the bits of k. X25519 (RFC 7748)
uses the Montgomery ladder on x-coordinates only.
"""

from __future__ import annotations

Point = tuple[int, int] | None

# SEC 2 / FIPS 186-4 domain parameters for P-256 (secp256r1).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G: Point = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)


def inverse(z: int, p: int = P) -> int:
    if z % p == 0:
        raise ZeroDivisionError("0 has no inverse")
    return pow(z, p - 2, p)


def on_curve(pt: Point) -> bool:
    if pt is None:
        return True
    x, y = pt
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def negate(pt: Point) -> Point:
    return None if pt is None else (pt[0], (-pt[1]) % P)


def double(pt: Point) -> Point:
    if pt is None or pt[1] == 0:
        return None
    x, y = pt
    s = (3 * x * x + A) * inverse(2 * y) % P
    x3 = (s * s - 2 * x) % P
    return x3, (s * (x - x3) - y) % P


def add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    if p1[0] == p2[0]:
        return double(p1) if p1[1] == p2[1] else None
    s = (p2[1] - p1[1]) * inverse(p2[0] - p1[0]) % P
    x3 = (s * s - p1[0] - p2[0]) % P
    return x3, (s * (p1[0] - x3) - p1[1]) % P


def multiply(k: int, pt: Point = G) -> Point:
    """k * pt by double-and-add, most significant bit first (variable time)."""
    if not on_curve(pt):
        raise ValueError("point is not on P-256")
    result: Point = None
    for bit in bin(k % N)[2:] if k % N else "":
        result = double(result)
        if bit == "1":
            result = add(result, pt)
    return result


def encode_uncompressed(pt: Point) -> bytes:
    if pt is None:
        raise ValueError("the point at infinity has no encoding")
    return b"\x04" + pt[0].to_bytes(32, "big") + pt[1].to_bytes(32, "big")


def decode_uncompressed(data: bytes) -> Point:
    if len(data) != 65 or data[0] != 4:
        raise ValueError("not an uncompressed P-256 point")
    pt = (int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big"))
    if not on_curve(pt):
        raise ValueError("point is not on P-256")
    return pt


# -- X25519 (RFC 7748) ---------------------------------------------------------
P25519 = 2**255 - 19
A24 = 121665


def _clamp(k: bytes) -> int:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(b, "little")


def x25519(k: bytes, u: bytes) -> bytes:
    """The X25519 function: Montgomery ladder on the u-coordinate (RFC 7748 §5)."""
    if len(k) != 32 or len(u) != 32:
        raise ValueError("X25519 takes 32-byte scalars and coordinates")
    scalar = _clamp(k)
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P25519, (x2 - z2) % P25519
        aa, bb = a * a % P25519, b * b % P25519
        e = (aa - bb) % P25519
        c, d = (x3 + z3) % P25519, (x3 - z3) % P25519
        da, cb = d * a % P25519, c * b % P25519
        x3 = (da + cb) ** 2 % P25519
        z3 = x1 * (da - cb) ** 2 % P25519
        x2 = aa * bb % P25519
        z2 = e * (aa + A24 * e) % P25519
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P25519 - 2, P25519) % P25519).to_bytes(32, "little")


X25519_BASE = (9).to_bytes(32, "little")
