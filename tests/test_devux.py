"""Devices as a careful user expects them (issue 12, findings/newuser2.md items 3-12): each test walks
README's commands through the installed entry point against a real server (real TLS, real SQLite) and
fails on the code before its fix (named in each docstring)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.serverproc import PASSWORD, ServerProc, login, sc, users_logged_in

CODE = re.compile(rb"pairing code:? ([0-9A-Z]{5}-[0-9A-Z]{5})")


def _code(r) -> str:
    found = CODE.search(r.stderr + r.stdout)
    assert found, r.stderr
    return found.group(1).decode()


def _pair(srv: ServerProc, first: Path, second: Path, user: str, *extra: str) -> None:
    r = login(second, srv, user, PASSWORD, *extra)
    assert r.returncode == 0, r.stderr
    r = sc(first, "devices", "approve", _code(r), "--yes")
    assert r.returncode == 0, r.stderr
    r = login(second, srv, user, PASSWORD, *extra)
    assert r.returncode == 0, r.stderr
    assert b"paired" in r.stderr, r.stderr


def _rows(home: Path) -> list[dict]:
    r = sc(home, "devices", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _pairings(srv: ServerProc) -> list[bytes]:
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return [bytes(d) for (d,) in con.execute("SELECT device_id FROM pairings")]
    finally:
        con.close()


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    homes["phone"] = tmp_path / "alice-phone"
    _pair(srv, homes["alice"], homes["phone"], "alice")
    yield srv, homes
    srv.stop(signal.SIGKILL)


def test_a_removed_device_logs_in_again_and_pairs_anew(world):
    """Item 3. Before: the server kept the removed device's used pairing record and answered
    pair_complete with the old approval; the client then crashed on the user key it already held
    (`internal error (FileExistsError)`, exit 1, every time)."""
    srv, homes = world
    phone = next(r for r in _rows(homes["alice"]) if not r["this"])
    r = sc(homes["alice"], "devices", "remove", phone["id"], "--yes")
    assert r.returncode == 0, r.stderr
    assert bytes.fromhex(phone["device_id"]) not in _pairings(srv)  # the server forgot its pairing
    r = login(homes["phone"], srv, "alice")
    assert r.returncode == 0, r.stderr
    assert b"internal error" not in r.stderr
    code = _code(r)  # a new pairing, not the old approval
    assert sc(homes["alice"], "devices", "approve", code, "--yes").returncode == 0
    r = login(homes["phone"], srv, "alice")
    assert r.returncode == 0, r.stderr
    assert len(_rows(homes["phone"])) == 2
    assert sc(homes["bob"], "send", "--to", "alice", "back again").returncode == 0
    r = sc(homes["phone"], "inbox", "--json")
    assert r.returncode == 0 and [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["back again"]


def test_an_old_device_paired_after_a_reset_takes_the_new_user_key(world):
    """Item 4. Before: the laptop, approved by the device that reset the key, logged in "registered",
    kept the old user key, and `devices` / `send` then failed (exit 6, no hint)."""
    srv, homes = world
    r = login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr
    new_key = json.loads(login(homes["phone"], srv, "alice", PASSWORD, "--json").stdout)["user_key"]
    r = login(homes["alice"], srv, "alice")  # the dropped laptop asks to join again
    assert r.returncode == 0, r.stderr
    assert sc(homes["phone"], "devices", "approve", _code(r), "--yes").returncode == 0
    r = login(homes["alice"], srv, "alice", PASSWORD, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user_key"] == new_key
    assert b"user key was reset" in r.stderr and b"paired" in r.stderr
    assert len(_rows(homes["alice"])) == 2
    r = sc(homes["alice"], "send", "--to", "alice", "note")
    assert r.returncode == 0, r.stderr
    r = sc(homes["alice"], "inbox", "--json")
    assert r.returncode == 0 and b"REJECTED" not in r.stderr


def test_a_device_waiting_to_be_paired_says_so_everywhere(world, tmp_path):
    """Item 10. Before: `user login` printed "logged in ... registered" (no pending state in --json), and
    send/inbox/devices/status on that device said "key not registered (log in with a password first)"."""
    srv, homes = world
    tablet = tmp_path / "tablet"
    r = login(tablet, srv, "alice", PASSWORD, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pending"] is True and re.fullmatch(r"[0-9A-Z]{5}-[0-9A-Z]{5}", out["pairing_code"])
    code = out["pairing_code"]
    r = login(tablet, srv, "alice")  # a new code replaces the old one
    assert b"waits to be paired: pairing code" in r.stdout and b"registered" not in r.stdout
    code = _code(r)
    for args in (("send", "--to", "bob", "hi"), ("inbox",), ("devices",), ("status",)):
        r = sc(tablet, *args)
        assert r.returncode == 5, (args, r.stderr)
        assert f"waits to be paired with alice's devices (pairing code {code})".encode() in r.stderr, r.stderr
        assert f"hint: on that device: securecomm devices approve {code}".encode() in r.stderr
        assert b"log in with a password first" not in r.stderr


def test_the_pairing_hint_names_home_and_identity_and_login_goes_on_with_them(world, tmp_path):
    """Item 11. Before: the hint said "then run user login alice here again"; run as is, it made a new
    `default` identity with a new code instead of finishing the pairing of `tablet`."""
    srv, homes = world
    home = tmp_path / "t"
    r = login(home, srv, "alice", PASSWORD, "--identity", "tablet")
    assert r.returncode == 0, r.stderr
    assert f"then here: securecomm --home {home} user login alice --identity tablet".encode() in r.stderr
    assert sc(homes["alice"], "devices", "approve", _code(r), "--yes").returncode == 0
    r = login(home, srv, "alice")  # no --identity: the profile's
    assert r.returncode == 0, r.stderr
    assert b"paired" in r.stderr and not (home / "identities" / "default.key").exists()
