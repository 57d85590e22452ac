"""`securecomm encrypt` / `decrypt` between two separate homes, from the shell."""

from __future__ import annotations

import pytest

from tests.conftest import run_entry


@pytest.fixture
def pair(tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    for h, kem in ((alice, "mlkem768-x25519"), (bob, "p256")):
        assert run_entry("--home", str(h), "keygen", "--kem", kem).returncode == 0
    return alice, bob


def enc(alice, bob, body: bytes, *extra: str) -> bytes:
    r = run_entry("--home", str(alice), "encrypt", "-r", str(bob / "identities" / "default.pub"), *extra, "-",
                  input=body)
    assert r.returncode == 0, r.stderr
    return r.stdout


def dec(bob, alice, data: bytes, *extra: str):
    return run_entry("--home", str(bob), "decrypt", "--from", str(alice / "identities" / "default.pub"),
                     *extra, "-", input=data)


@pytest.mark.parametrize("armored", [False, True])
def test_round_trip_between_homes(pair, armored):
    alice, bob = pair
    body = b"meet at the usual place\n\x00\xff binary too"
    sealed = enc(alice, bob, body, *(["--armor"] if armored else []))
    assert body not in sealed
    if armored:
        assert sealed.startswith(b"-----BEGIN SECURECOMM ENVELOPE-----")
    r = dec(bob, alice, sealed)
    assert r.returncode == 0, r.stderr
    assert r.stdout == body
    from securecomm.crypto.identity import load_public

    fp = load_public(alice / "identities" / "default.pub").fingerprint_text
    assert f"from {fp}" in r.stderr.decode()


def test_output_file_written_only_on_success(pair, tmp_path):
    alice, bob = pair
    sealed = enc(alice, bob, b"hello")
    out = tmp_path / "out.txt"
    tampered = sealed[:-70] + bytes([sealed[-70] ^ 1]) + sealed[-69:]
    r = dec(bob, alice, tampered, "-o", str(out))
    assert r.returncode == 6
    assert not out.exists()
    assert r.stderr.decode().count("\n") == 1 and r.stderr.startswith(b"securecomm: error:")
    r = dec(bob, alice, sealed, "-o", str(out))
    assert r.returncode == 0
    assert out.read_bytes() == b"hello"
    assert oct(out.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("cut", [1, 100, 2000])
def test_truncated_input(pair, cut):
    alice, bob = pair
    sealed = enc(alice, bob, b"hello")
    r = dec(bob, alice, sealed[:-cut])
    assert r.returncode == 6
    assert r.stdout == b""
    assert b"Traceback" not in r.stderr


def test_wrong_key(pair, tmp_path):
    alice, bob = pair
    carol = tmp_path / "carol"
    run_entry("--home", str(carol), "keygen", "--kem", "p256")
    sealed = enc(alice, bob, b"for bob only")
    r = run_entry("--home", str(carol), "decrypt", "--from", str(alice / "identities" / "default.pub"), "-",
                  input=sealed)
    assert r.returncode == 6
    assert b"addressed to another identity" in r.stderr
    assert r.stdout == b""


def test_unknown_sender(pair):
    alice, bob = pair
    sealed = enc(alice, bob, b"who am i")
    r = run_entry("--home", str(bob), "decrypt", "-", input=sealed)
    assert r.returncode == 5
    assert b"not a known identity" in r.stderr
    assert b"--from" in r.stderr
    assert r.stdout == b""


def test_bad_recipient_argument(pair):
    alice, _ = pair
    r = run_entry("--home", str(alice), "encrypt", "-r", "nonsense", "-", input=b"x")
    assert r.returncode == 2
    assert r.stderr.startswith(b"securecomm: error:")
