"""The reference curve module agrees with `cryptography` and published values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from securecomm.crypto import curve

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hpke-rfc9180-base.json").read_text())["vectors"]
P256_VECTORS = [v for v in VECTORS if v["kem_id"] == 0x10]


def lib_public(k: int) -> bytes:
    key = ec.derive_private_key(k, ec.SECP256R1())
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=curve.N - 1))
def test_scalar_mult_matches_library(k):
    assert curve.encode_uncompressed(curve.multiply(k)) == lib_public(k)


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=1, max_value=curve.N - 1), st.integers(min_value=1, max_value=curve.N - 1))
def test_ecdh_shared_point_matches_library(a, b):
    ka, kb = ec.derive_private_key(a, ec.SECP256R1()), ec.derive_private_key(b, ec.SECP256R1())
    shared = ka.exchange(ec.ECDH(), kb.public_key())
    point = curve.multiply(a, curve.multiply(b))
    assert point[0].to_bytes(32, "big") == shared


def test_group_laws():
    g2 = curve.double(curve.G)
    assert curve.add(curve.G, curve.G) == g2
    assert curve.add(curve.G, None) == curve.G
    assert curve.add(curve.G, curve.negate(curve.G)) is None
    assert curve.multiply(curve.N) is None  # the order of G
    assert curve.multiply(curve.N + 1) == curve.G
    assert curve.add(curve.multiply(3), curve.multiply(4)) == curve.multiply(7)
    assert curve.on_curve(curve.multiply(12345))


def test_off_curve_points_are_rejected():
    x, y = curve.G
    assert not curve.on_curve((x, y + 1))
    with pytest.raises(ValueError):
        curve.multiply(2, (x, y + 1))
    with pytest.raises(ValueError):
        curve.decode_uncompressed(b"\x04" + x.to_bytes(32, "big") + (y + 1).to_bytes(32, "big"))


@pytest.mark.parametrize("v", P256_VECTORS, ids=lambda v: f"aead{v['aead_id']}")
def test_rfc9180_p256_public_keys_from_private(v):
    for sk, pk in (("skEm", "pkEm"), ("skRm", "pkRm")):
        k = int(v[sk], 16)
        assert curve.encode_uncompressed(curve.multiply(k)).hex() == v[pk]


def test_x25519_rfc7748_vector_and_library():
    # RFC 7748 section 5.2, first test vector
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert curve.x25519(k, u).hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    sk = x25519.X25519PrivateKey.generate()
    raw = sk.private_bytes_raw()
    assert curve.x25519(raw, curve.X25519_BASE) == sk.public_key().public_bytes_raw()
