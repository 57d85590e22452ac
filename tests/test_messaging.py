"""Direct messages, store and forward, contacts, rooms: three users on one real server."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import pytest

from securecomm.cli.context import State
from securecomm.client.events import DirectMessage, RoomText
from securecomm.client.login import connect_profile
from securecomm.client.messenger import Messenger
from securecomm.crypto import identity as ident
from securecomm.crypto import room as roomcrypto
from securecomm.errors import DecryptError
from tests.serverproc import PASSWORD, ServerProc, login, sc, users_logged_in

USERS = ("alice", "bob", "carol")


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, USERS)
    yield srv, homes
    srv.stop(signal.SIGKILL)



def mailbox_rows(srv):
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return con.execute("SELECT id, envelope FROM mailbox ORDER BY id").fetchall()
    finally:
        con.close()


# -- direct messages ---------------------------------------------------------------------
def test_offline_then_online_and_no_plaintext_on_server(world):
    srv, homes = world
    secret = "the vault code is 7391"
    r = sc(homes["alice"], "send", "--to", "carol", secret)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"stored ")
    assert len(mailbox_rows(srv)) == 1
    db_bytes = b"".join(p.read_bytes() for p in srv.home.glob("securecomm.db*"))
    assert secret.encode() not in db_bytes  # the server only ever held ciphertext
    assert secret not in srv.log
    r = sc(homes["carol"], "inbox", "--json")
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(m["from"], m["body"], m["verified"]) for m in msgs] == [("alice", secret, True)]
    assert mailbox_rows(srv) == []  # deleted once acknowledged
    assert sc(homes["carol"], "inbox", "--json").stdout == b""  # exactly once


def test_order_per_sender_is_kept(world):
    _, homes = world
    for i in range(12):
        assert sc(homes["alice"], "send", "--to", "bob", f"number {i}").returncode == 0
    r = sc(homes["bob"], "inbox", "--json")
    bodies = [json.loads(line)["body"] for line in r.stdout.splitlines()]
    assert bodies == [f"number {i}" for i in range(12)]


def test_server_restart_between_send_and_delivery(world):
    srv, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "survives a restart").returncode == 0
    assert srv.stop(signal.SIGTERM) == 0
    srv.start()
    r = sc(homes["bob"], "inbox", "--json")
    assert [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["survives a restart"]


def test_client_dedupes_a_redelivery(world):
    srv, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "only once please").returncode == 0
    (row,) = mailbox_rows(srv)
    assert sc(homes["bob"], "inbox").stdout.count(b"only once please") == 1
    # the server loses the ACK (say it crashed first) and delivers the same message again
    con = sqlite3.connect(srv.home / "securecomm.db")
    con.execute("INSERT INTO mailbox (recipient_id, sender_id, msg_id, stored_at_ms, envelope) "
                "SELECT u2.id, u1.id, ?, 0, ? FROM users u1, users u2 WHERE u1.name = 'alice' AND u2.name = 'bob'",
                (b"x" * 16, row[1]))
    con.commit()
    con.close()
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 0
    assert b"only once please" not in r.stdout
    assert mailbox_rows(srv) == []  # acknowledged all the same


def test_delivery_receipt_with_wait(world, tmp_path):
    import subprocess

    from tests.conftest import ENTRY

    srv, homes = world
    logged_in = "user=bob logged in (identity key)"
    before = srv.log.count(logged_in)
    follower = subprocess.Popen([ENTRY, "--home", str(homes["bob"]), "inbox", "--follow"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        import time

        deadline = time.monotonic() + 30  # only catches a hang: the server logs the login before LOGIN_OK
        while srv.log.count(logged_in) == before:
            assert time.monotonic() < deadline and follower.poll() is None, "inbox --follow did not log in"
            time.sleep(0.02)
        r = sc(homes["alice"], "send", "--to", "bob", "--wait", "--timeout", "20", "are you there?")
        assert r.returncode == 0, r.stderr
        assert b"signed receipt verified" in r.stdout
    finally:
        follower.send_signal(signal.SIGINT)
        out, _ = follower.communicate(timeout=10)
    assert b"are you there?" in out


def test_wait_times_out_when_recipient_offline(world):
    _, homes = world
    r = sc(homes["alice"], "send", "--to", "bob", "--wait", "--timeout", "1", "anyone?")
    assert r.returncode == 11  # its own status (README's exit-code table): 7 means the server cannot be reached
    assert b"stays on the server" in r.stderr


def test_unknown_recipient(world):
    _, homes = world
    r = sc(homes["alice"], "send", "--to", "nobody", "hello?")
    assert r.returncode == 3


def test_tampered_stored_envelope_is_rejected_not_printed(world):
    srv, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "tamper with me").returncode == 0
    (row_id, env) = mailbox_rows(srv)[0]
    bad = bytearray(env)
    bad[-100] ^= 0x01  # inside the ciphertext
    con = sqlite3.connect(srv.home / "securecomm.db")
    con.execute("UPDATE mailbox SET envelope = ? WHERE id = ?", (bytes(bad), row_id))
    con.commit()
    con.close()
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 6
    assert b"tamper with me" not in r.stdout
    assert b"REJECTED" in r.stderr and b"alice" in r.stderr
    assert mailbox_rows(srv) == []


def test_changed_key_is_refused_until_trusted(world):
    srv, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "first contact").returncode == 0
    contacts = json.loads(sc(homes["alice"], "contacts", "--json").stdout)
    assert [c["name"] for c in contacts] == ["bob"]
    # bob starts over on a new device with a new user key (or someone swapped it on the server):
    # a new device alone is no change for his contacts (version 2 pins the user key), a new user key is
    assert sc(homes["bob"], "keygen", "--force").returncode == 0
    r = login(homes["bob"], srv, "bob", PASSWORD, "--replace-key", "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr
    assert b"new user key" in r.stderr
    r = sc(homes["alice"], "send", "--to", "bob", "should not go")
    assert r.returncode == 6
    assert b"CHANGED" in r.stderr and b"contacts trust bob" in r.stderr
    listing = sc(homes["alice"], "contacts").stdout.decode()
    assert "CHANGED to" in listing
    assert sc(homes["alice"], "contacts", "trust", "bob").returncode == 0
    assert sc(homes["alice"], "send", "--to", "bob", "after verifying").returncode == 0
    r = sc(homes["bob"], "inbox", "--json")
    # the message sealed to bob's old key can no longer be opened by him; it is reported, not shown
    bodies = [json.loads(x)["body"] for x in r.stdout.splitlines()]
    assert "after verifying" in bodies


def test_escape_sequences_are_not_obeyed(world):
    _, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "\x1b[2Jcleared?").returncode == 0
    out = sc(homes["bob"], "inbox").stdout
    assert b"\x1b" not in out
    assert b"\\x1b[2Jcleared?" in out


# -- rooms: in-process messengers against the same real server ------------------------------
async def _messenger(home, events):
    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, profile = await connect_profile(state.paths, me)
    m = Messenger(client, me, profile.user, state.paths, events.append)
    m.pump = asyncio.create_task(m.run())
    return m


async def _close(*messengers):
    """Stop each messenger's pump and close its connection."""
    for m in messengers:
        m.pump.cancel()
        await m.client.close()


async def _until(pred, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_room_fan_out_and_rotation_on_leave(world):
    _, homes = world

    async def go():
        ev = {u: [] for u in USERS}
        ms = {u: await _messenger(homes[u], ev[u]) for u in USERS}
        try:
            for u in USERS:
                await ms[u].join("lobby")
            await _until(lambda: all(len(ms[u].rooms["lobby"].keys) == 2 for u in USERS))
            receipt = await ms["alice"].send_room("lobby", b"hello everyone")
            assert receipt.sha256
            texts = lambda u: [e for e in ev[u] if isinstance(e, RoomText)]  # noqa: E731
            await _until(lambda: texts("bob") and texts("carol"))
            assert texts("bob")[0].body == texts("carol")[0].body == b"hello everyone"
            assert texts("bob")[0].msg_id == texts("carol")[0].msg_id  # the same bytes went to both
            assert not texts("alice")
            # carol leaves: alice and bob rotate their sender keys
            (alices,) = ms["carol"].rooms["lobby"].keys["alice"].values()  # one device of alice in the room
            carol_copy = roomcrypto.SenderKey(**{k: v for k, v in vars(alices).items() if k != "skipped"})
            old_key_id = ms["alice"].rooms["lobby"].my_key.key_id
            await ms["carol"].leave("lobby")
            await _until(lambda: "carol" not in ms["alice"].rooms["lobby"].members)
            # version 2 rotates when alice next speaks (a rotation claims a prekey of every member device)
            _, payload = await ms["alice"].seal_room("lobby", b"carol must not read this")
            assert ms["alice"].rooms["lobby"].my_key.key_id != old_key_id
            await _until(lambda: [k.key_id for k in ms["bob"].rooms["lobby"].keys["alice"].values()]
                         == [ms["alice"].rooms["lobby"].my_key.key_id])
            with pytest.raises(DecryptError):
                roomcrypto.decrypt("lobby", payload, ms["alice"].me.public, carol_copy)
            await ms["alice"].send_room("lobby", b"after rotation")
            await _until(lambda: any(t.body == b"after rotation" for t in texts("bob")))
            assert ms["alice"].rooms["lobby"].members.keys() == {"bob"}
        finally:
            await _close(*ms.values())

    asyncio.run(go())


def test_direct_message_in_process_reaches_online_user(world):
    _, homes = world

    async def go():
        ev_a, ev_b = [], []
        a, b = await _messenger(homes["alice"], ev_a), await _messenger(homes["bob"], ev_b)
        try:
            _, msg_id = await a.send_direct("bob", b"live direct")
            await _until(lambda: any(isinstance(e, DirectMessage) for e in ev_b))
            receipt = await a.wait_delivered(msg_id, 10)
            assert receipt.verified and receipt.to == "bob"
        finally:
            await _close(a, b)

    asyncio.run(go())


def test_more_mail_than_one_batch_arrives_in_order(world):
    """Over MAIL_BATCH (256) waiting messages: delivered in pages, all of them, in order, once."""
    from securecomm.server.relay import MAIL_BATCH

    _, homes = world
    total = MAIL_BATCH + 44

    async def send_all():
        events = []
        a = await _messenger(homes["alice"], events)
        try:
            for i in range(total):
                await a.send_direct("bob", f"n{i}".encode())
        finally:
            a.pump.cancel()
            await a.client.close()

    asyncio.run(send_all())
    r = sc(homes["bob"], "inbox", "--json")
    assert r.returncode == 0, r.stderr
    bodies = [json.loads(x)["body"] for x in r.stdout.splitlines()]
    assert bodies == [f"n{i}" for i in range(total)]


def test_seen_ids_append_and_stay_bounded(tmp_path, monkeypatch):
    from securecomm.client import messenger

    monkeypatch.setattr(messenger, "SEEN_LIMIT", 5)
    path = tmp_path / "seen_ids"
    seen = messenger.SeenIds(path)
    for i in range(12):
        seen.add(f"k{i}")
    again = messenger.SeenIds(path)  # what a restarted client knows
    assert "k11" in again and "k0" not in again
    assert len(path.read_text().split()) <= 10
    assert oct(path.stat().st_mode & 0o777) == "0o600"
