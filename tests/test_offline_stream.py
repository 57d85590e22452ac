"""`securecomm encrypt` / `decrypt` of inputs larger than one envelope (docs/PROTOCOL.md 2.6), from the shell."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from securecomm.cli import bigfiles, offline
from securecomm.crypto import envelope as E
from securecomm.crypto import stream as S
from tests.conftest import ENTRY, run_entry
from tests.test_chat_tty import Tmux

BIG = 3 * 1024 * 1024 + 12345  # over one envelope, a few 1 MiB reads, a partial last chunk


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("homes")
    alice, bob = base / "alice", base / "bob"
    for h in (alice, bob):
        assert run_entry("--home", str(h), "keygen", "--kem", "x25519").returncode == 0
    return alice, bob


def enc(alice, bob, *args: str, input: bytes | None = None):
    return run_entry("--home", str(alice), "encrypt", "-r", str(bob / "identities" / "default.pub"), *args,
                     input=input)


def dec(bob, alice, *args: str, input: bytes | None = None):
    return run_entry("--home", str(bob), "decrypt", "--from", str(alice / "identities" / "default.pub"), *args,
                     input=input)


def test_small_input_keeps_single_shot_envelope(pair, tmp_path):
    """Up to MAX_BODY_SIZE: today's envelope (SCE1, its exact size); one byte more: the streaming form."""
    alice, bob = pair
    for size, magic in ((E.MAX_BODY_SIZE, E.MAGIC), (E.MAX_BODY_SIZE + 1, S.MAGIC)):
        body = os.urandom(size)
        r = enc(alice, bob, "-", input=body)
        assert r.returncode == 0, r.stderr
        assert r.stdout[:4] == magic
        if magic == E.MAGIC:
            E.parse(r.stdout)  # every length checks out exactly
            assert len(r.stdout) == E.HEADER_SIZE + 6 + 32 + 32 + size + 16 + 64
        got = dec(bob, alice, "-", input=r.stdout)
        assert got.returncode == 0 and got.stdout == body


def test_small_armored_is_the_old_armor(pair):
    alice, bob = pair
    r = enc(alice, bob, "--armor", "-", input=b"short note")
    raw = offline.dearmor(r.stdout)
    assert raw[:4] == E.MAGIC and offline.armor(raw) == r.stdout


@pytest.mark.parametrize("armored", [False, True])
def test_file_round_trip(pair, tmp_path, armored):
    alice, bob = pair
    src, sealed, out = tmp_path / "in.bin", tmp_path / "in.sce", tmp_path / "out.bin"
    body = os.urandom(BIG)
    src.write_bytes(body)
    r = enc(alice, bob, *(["--armor"] if armored else []), "-o", str(sealed), str(src))
    assert r.returncode == 0, r.stderr
    assert b"streaming form" in r.stderr
    data = sealed.read_bytes()
    if armored:
        assert data.startswith(bigfiles.ARMOR_BEGIN) and all(len(x) <= 64 for x in data.splitlines())
        data = offline.dearmor(data)
    assert data[:4] == S.MAGIC and body[:1000] not in data
    r = dec(bob, alice, "-o", str(out), str(sealed))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == body
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert f"{BIG} bytes, every chunk and the signature verified".encode() in r.stderr


def test_pipe_round_trip_tens_of_mb(pair):
    """From a pipe to a pipe, 24 MiB, armored: nothing needs the size up front."""
    alice, bob = pair
    body = os.urandom(24 << 20)
    sealed = enc(alice, bob, "--armor", input=body)
    assert sealed.returncode == 0, sealed.stderr
    r = dec(bob, alice, input=sealed.stdout)
    assert r.returncode == 0, r.stderr
    assert r.stdout == body


def test_armor_blocks_match_armor():
    data = os.urandom(10_000)
    pieces = [data[i : i + 77] for i in range(0, len(data), 77)]
    assert b"".join(bigfiles.armor_blocks(pieces)) == offline.armor(data)
    text = offline.armor(data)
    assert b"".join(bigfiles.dearmor_blocks([text[i : i + 5] for i in range(0, len(text), 5)])) == data


@pytest.fixture(scope="module")
def sealed_big(pair, tmp_path_factory):
    alice, bob = pair
    body = os.urandom(BIG)
    r = enc(alice, bob, "-", input=body)
    assert r.returncode == 0
    return body, r.stdout


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "extended"])
def test_failed_decrypt_leaves_nothing_at_output(pair, sealed_big, tmp_path, damage):
    alice, bob = pair
    _, raw = sealed_big
    bad = {"truncated": raw[: len(raw) // 2], "flipped": _flip(raw, len(raw) - 1000),
           "extended": raw + raw[-200:]}[damage]
    out = tmp_path / "out.bin"
    r = dec(bob, alice, "-o", str(out), input=bad)
    assert r.returncode == 6
    assert r.stderr.startswith(b"securecomm: error:") and r.stderr.count(b"\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no temp file


def test_failed_decrypt_keeps_existing_output(pair, sealed_big, tmp_path):
    alice, bob = pair
    _, raw = sealed_big
    out = tmp_path / "out.bin"
    out.write_bytes(b"the old contents")
    r = dec(bob, alice, "--force", "-o", str(out), input=raw[:-1])
    assert r.returncode == 6
    assert out.read_bytes() == b"the old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_stdout_gets_a_verified_prefix_then_an_error(pair, sealed_big):
    """Default to stdout: chunks as they verify (as age does); the cut is reported, the last chunk never shown."""
    alice, bob = pair
    body, raw = sealed_big
    r = dec(bob, alice, input=raw[:-1])
    assert r.returncode == 6 and b"securecomm: error:" in r.stderr
    assert 0 < len(r.stdout) < len(body) and body.startswith(r.stdout)
    assert len(r.stdout) % S.CHUNK_SIZE == 0


def test_verify_first_writes_nothing_on_failure(pair, sealed_big):
    alice, bob = pair
    body, raw = sealed_big
    r = dec(bob, alice, "--verify-first", input=raw[:-1])
    assert r.returncode == 6 and r.stdout == b""
    r = dec(bob, alice, "--verify-first", input=raw)
    assert r.returncode == 0 and r.stdout == body


def test_large_non_envelope_is_refused(pair):
    alice, bob = pair
    r = dec(bob, alice, input=b"x" * (3 * E.MAX_ENVELOPE_SIZE))
    assert r.returncode == 6
    assert r.stderr == b"securecomm: error: input is larger than the maximum envelope size\n"


def test_stream_to_another_identity_names_it(pair, sealed_big, tmp_path):
    alice, _ = pair
    _, raw = sealed_big
    carol = tmp_path / "carol"
    run_entry("--home", str(carol), "keygen", "--kem", "x25519")
    r = run_entry("--home", str(carol), "decrypt", "--from", str(alice / "identities" / "default.pub"),
                  input=raw)
    assert r.returncode == 6 and r.stdout == b""
    assert b"addressed to another identity" in r.stderr and b"none of your identities" in r.stderr
    assert b"Traceback" not in r.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal(pair, tmp_path):
    alice, bob = pair
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(bigfiles.PROGRESS_MIN + 1))
    r = enc(alice, bob, "-o", str(tmp_path / "big.sce"), str(src))
    assert r.returncode == 0
    assert r.stderr.count(b"\n") == 1 and b"encrypting" not in r.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_progress_bar_on_a_terminal(pair, tmp_path):
    alice, bob = pair
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(bigfiles.PROGRESS_MIN * 2))
    tmux, name = Tmux(), f"enc{uuid.uuid4().hex[:6]}"
    try:
        tmux.start(name, f"{ENTRY} --home {alice} encrypt -r {bob}/identities/default.pub -o {tmp_path}/b.sce "
                         f"{src}; echo ENC-EXITED-$?; sleep 30")
        screen = tmux.wait_for(name, "ENC-EXITED-0", timeout=60)
    finally:
        tmux.kill()
    assert "encrypting" in screen and "100%" in screen
