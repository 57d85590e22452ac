"""The worked examples written inline in docs/PROTOCOL.md are the vectors, and they chain.

An independent client was written from the spec alone: it needed the registration proof and a
stream chunk byte by byte in the text (not only under tests/vectors), and it found that the
SERVER_HELLO example named a server whose fingerprint was not the one in the login example.
These tests recompute every inline value with `cryptography` directly, so the text cannot drift.
"""
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from securecomm.crypto.identity import PublicIdentity

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
VECTORS = ROOT / "tests" / "vectors"


def test_server_hello_example_chains_with_the_login_example():
    login = json.loads((VECTORS / "signatures-v1.json").read_text())["login"][0]
    frame = re.search(r"^    (?:[0-9a-f]{2} ){3}[0-9a-f]{2} \| 81 \| (\{.*\})$", DOC, re.MULTILINE)
    assert frame, "no SERVER_HELLO example in 5.3"
    hello = json.loads(frame.group(1))
    fingerprint = PublicIdentity.from_line(hello["identity"]).fingerprint
    transcript = bytes.fromhex(login["transcript"])
    assert transcript[51:83] == fingerprint  # the login example's server fingerprint
    assert transcript[19:51] == bytes.fromhex(hello["challenge"])
    assert fingerprint.hex() in DOC


def test_registration_example_is_the_first_vector_and_verifies():
    case = json.loads((VECTORS / "register-signature-v1.json").read_text())["cases"][0]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["ed25519_seed"]))
    transcript = b"securecomm/v1/register" + bytes.fromhex(case["challenge"]) \
        + bytes.fromhex(case["server_fingerprint"]) + bytes([len(case["user"])]) + case["user"].encode()
    signature = key.sign(transcript)
    assert transcript.hex() == case["transcript"]
    assert signature.hex() == case["signature"]
    for part in (transcript[:22], transcript[22:54], transcript[54:86], transcript[87:],
                 signature[:32], signature[32:], bytes.fromhex(case["ed25519_seed"])):
        assert part.hex() in DOC, part.hex()


def test_stream_chunk_examples_reproduce_with_chacha20_poly1305():
    chunks = json.loads((VECTORS / "stream-v1.json").read_text())["chunks"]
    rows = re.findall(r"^\| (\d+) \| ([01]) \| `([0-9a-f]{24})` \| `([0-9a-f]*|\(empty\))` \| `([0-9a-f]+)` \|$",
                      DOC, re.MULTILINE)
    assert len(rows) == len(chunks) >= 2
    for (counter, last, nonce, plaintext, ciphertext), case in zip(rows, chunks, strict=True):
        key = bytes.fromhex(case["payload_key"])
        assert key.hex() in DOC
        expected_nonce = int(counter).to_bytes(11, "big") + bytes([int(last)])
        assert nonce == expected_nonce.hex() == case["nonce"]
        pt = b"" if plaintext == "(empty)" else bytes.fromhex(plaintext)
        assert ChaCha20Poly1305(key).encrypt(expected_nonce, pt, b"").hex() == ciphertext == case["ciphertext"]
