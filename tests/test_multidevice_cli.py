"""Several devices of one account through the CLI (issue 12, docs/PROTOCOL.md 6.4, 6.13): pairing without
--replace-key, a direct message to every device of the recipient and to the sender's other devices (shown
there as sent), receipts per device, removal mid-conversation. Real server, real TLS, real SQLite."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.serverproc import PASSWORD, ServerProc, login, sc, users_logged_in

CODE = re.compile(rb"pairing code: ([0-9A-Z]{5}-[0-9A-Z]{5})")
#: The new device's own fingerprint, in the approve command its hint prints (what a person copies).
FINGERPRINT = re.compile(rb"--fingerprint (SHA256:[A-Za-z0-9+/]+)")


def fingerprint_in(out: bytes) -> str:
    found = FINGERPRINT.search(out)
    assert found, out
    return found.group(1).decode()


def pair_second_device(srv: ServerProc, first: Path, second: Path, user: str) -> None:
    """`user login` on the new device prints a code, `devices approve CODE` on the first signs it in,
    the next `user login` on the new device finishes (6.4)."""
    r = login(second, srv, user)
    assert r.returncode == 0, r.stderr
    found = CODE.search(r.stderr)
    assert found, r.stderr
    r = sc(first, "devices", "approve", found.group(1).decode(), "--fingerprint", fingerprint_in(r.stderr))
    assert r.returncode == 0, r.stderr
    r = login(second, srv, user)
    assert r.returncode == 0, r.stderr
    assert b"paired" in r.stderr


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    homes["alice2"] = tmp_path / "alice-phone"
    pair_second_device(srv, homes["alice"], homes["alice2"], "alice")
    yield srv, homes
    srv.stop(signal.SIGKILL)


def _inbox(home: Path) -> list[dict]:
    r = sc(home, "inbox", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_pairing_lists_both_devices_without_replacing_a_key(world):
    _, homes = world
    for home in (homes["alice"], homes["alice2"]):
        rows = json.loads(sc(home, "devices", "--json").stdout)
        assert len(rows) == 2 and sum(r["this"] for r in rows) == 1


def test_a_message_reaches_every_device_and_the_senders_other_device_as_sent(world):
    _, homes = world
    r = sc(homes["bob"], "send", "--to", "alice", "to both of your devices")
    assert r.returncode == 0, r.stderr
    for home in (homes["alice"], homes["alice2"]):  # exactly once per device
        assert [(m["from"], m["body"]) for m in _inbox(home)] == [("bob", "to both of your devices")]
        assert _inbox(home) == []
    r = sc(homes["alice"], "send", "--to", "bob", "from the laptop")
    assert r.returncode == 0, r.stderr
    assert [m["body"] for m in _inbox(homes["bob"])] == ["from the laptop"]
    mine = _inbox(homes["alice2"])
    assert [(m["from"], m.get("to"), m["body"]) for m in mine] == [("alice", "bob", "from the laptop")]
    text = sc(homes["alice2"], "inbox").stdout  # nothing left; the human form is checked on a fresh copy
    assert text == b""
    assert sc(homes["alice2"], "send", "--to", "bob", "from the phone").returncode == 0
    r = sc(homes["alice"], "inbox")
    assert r.returncode == 0 and b"alice \xe2\x86\x92 bob (sent)" in r.stdout and b"from the phone" in r.stdout


def test_a_note_to_self_reaches_this_device_and_the_other(world):
    _, homes = world
    assert sc(homes["alice"], "send", "--to", "alice", "note to self").returncode == 0
    for home in (homes["alice"], homes["alice2"]):
        got = _inbox(home)
        assert [(m["from"], m["body"]) for m in got] == [("alice", "note to self")]
    # this device's own copy is sealed to its own last-resort prekey, and says so
    assert [m.get("without_one_time_key") for m in got] == [None]


def test_a_removed_device_gets_nothing_more(world):
    _, homes = world
    rows = json.loads(sc(homes["alice"], "devices", "--json").stdout)
    phone = next(r for r in rows if not r["this"])
    r = sc(homes["alice"], "devices", "remove", phone["id"], "--yes")
    assert r.returncode == 0, r.stderr
    assert sc(homes["bob"], "send", "--to", "alice", "after the removal").returncode == 0
    assert [m["body"] for m in _inbox(homes["alice"])] == ["after the removal"]
    r = sc(homes["alice2"], "inbox", "--json")
    assert r.returncode != 0 and r.stdout == b""


def test_reset_user_key_drops_the_other_devices_and_changes_the_key_for_contacts(world, tmp_path):
    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "pin alice").returncode == 0
    assert sc(homes["bob"], "contacts", "verify", "alice", "--yes").returncode == 0
    r = login(homes["alice2"], srv, "alice", PASSWORD, "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr
    rows = json.loads(sc(homes["alice2"], "devices", "--json").stdout)
    assert len(rows) == 1 and rows[0]["this"]
    r = sc(homes["bob"], "send", "--to", "alice", "after the reset")
    assert r.returncode == 6 and b"CHANGED" in r.stderr
    assert b"STOP: you VERIFIED" in r.stderr  # louder for a contact whose safety number was compared


def test_adding_a_device_is_no_key_change_for_contacts(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    try:
        homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
        assert sc(homes["bob"], "send", "--to", "alice", "first").returncode == 0
        pair_second_device(srv, homes["alice"], tmp_path / "alice-phone", "alice")
        r = sc(homes["bob"], "send", "--to", "alice", "second")
        assert r.returncode == 0, r.stderr
        assert b"CHANGED" not in r.stderr
        assert [m["body"] for m in _inbox(homes["alice"])] == ["first", "second"]
        assert [m["body"] for m in _inbox(tmp_path / "alice-phone")] == ["second"]  # paired after the first
    finally:
        srv.stop(signal.SIGKILL)


def test_a_new_device_without_the_others_starts_over_with_reset_user_key(world, tmp_path):
    """Every device lost: a new home logs in pending, and --reset-user-key (no --replace-key) makes it the
    account's only device; it reads and sends from then on (6.4 end)."""
    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "before").returncode == 0  # bob pins alice's user key
    new = tmp_path / "alice-new"
    r = login(new, srv, "alice", PASSWORD, "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr
    assert b"new user key" in r.stderr and b"pairing code" not in r.stderr
    rows = json.loads(sc(new, "devices", "--json").stdout)
    assert len(rows) == 1 and rows[0]["this"]
    assert sc(homes["bob"], "contacts", "trust", "alice").returncode != 0  # not seen as changed yet
    r = sc(homes["bob"], "send", "--to", "alice", "who are you now")
    assert r.returncode == 6 and b"CHANGED" in r.stderr
    assert sc(homes["bob"], "contacts", "trust", "alice").returncode == 0
    assert sc(homes["bob"], "send", "--to", "alice", "welcome back").returncode == 0
    assert [m["body"] for m in _inbox(new)] == ["welcome back"]
    r = sc(homes["alice"], "inbox", "--json")  # the old laptop is no longer listed
    assert r.returncode != 0 and r.stdout == b""


def test_an_old_home_is_told_what_to_run_and_migrates_at_user_login(tmp_path):
    """A home and account as version 1 left them (identity key and profile; no user key, no device list,
    no prekeys): with version 1 off, its commands say exactly what to run, a contact's message to it is
    refused naming it (never sealed to its long-term key), and `user login` migrates it (6.12)."""
    import shutil
    import sqlite3

    srv = ServerProc(tmp_path / "srv").start()
    try:
        homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
        shutil.rmtree(homes["alice"] / "devices")
        con = sqlite3.connect(srv.home / "securecomm.db")
        try:
            (uid,) = con.execute("SELECT id FROM users WHERE name = 'alice'").fetchone()
            con.execute("DELETE FROM prekeys WHERE device_id IN (SELECT device_id FROM devices WHERE user_id = ?)",
                        (uid,))
            con.execute("DELETE FROM devices WHERE user_id = ?", (uid,))
            con.execute("DELETE FROM user_keys WHERE user_id = ?", (uid,))
            con.commit()
        finally:
            con.close()
        r = sc(homes["bob"], "send", "--to", "alice", "to an old account")
        assert r.returncode != 0 and b"'alice' exists but has no device set up yet" in r.stderr, r.stderr
        assert b"securecomm user login alice" in r.stderr
        for args in (("send", "--to", "bob", "from an old home"), ("inbox",)):
            r = sc(homes["alice"], *args)
            assert r.returncode != 0, r.stderr
            assert b"run once: securecomm user login alice" in r.stderr and b"Traceback" not in r.stderr, r.stderr
        r = login(homes["alice"], srv, "alice")
        assert r.returncode == 0, r.stderr
        assert (homes["alice"] / "devices" / "default" / "user.key").exists()
        assert sc(homes["alice"], "send", "--to", "bob", "after the upgrade").returncode == 0
        assert [m["body"] for m in _inbox(homes["bob"])] == ["after the upgrade"]
        assert sc(homes["bob"], "send", "--to", "alice", "and back").returncode == 0
        assert [m["body"] for m in _inbox(homes["alice"])] == ["and back"]
    finally:
        srv.stop(signal.SIGKILL)


def test_a_device_the_server_gives_no_prekey_for_is_named_to_the_sender(world):
    """Attack check: with alice's phone's prekeys deleted from the server (a server keeping a device out),
    bob's `send --to alice` sealed to the laptop only and said nothing."""
    import sqlite3

    srv, homes = world
    phone = json.loads(sc(homes["alice2"], "devices", "--json").stdout)
    mine = next(d for d in phone if d["this"])
    db = sqlite3.connect(srv.home / "securecomm.db")
    with db:
        gone = db.execute("DELETE FROM prekeys WHERE device_id = ?", (bytes.fromhex(mine["device_id"]),)).rowcount
    db.close()
    assert gone >= 1
    r = sc(homes["bob"], "send", "--to", "alice", "to both?")
    assert r.returncode == 0, r.stderr
    # by its name from the signed list (the new-user check, stop 26: by its id, since the claim has no cert)
    assert f"alice's device '{mine['name']}' gets no copy".encode() in r.stderr, r.stderr
