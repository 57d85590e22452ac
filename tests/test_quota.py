"""Issue 10: storage quotas and size limits are refusals (exit 9) with a hint, and lose nothing.

Real server process, real TLS, real SQLite, the installed entry point.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.serverproc import ServerProc, mailbox_count, sc, users_logged_in


@pytest.fixture
def pair(tmp_path):
    srv = ServerProc(tmp_path / "srv", "--mailbox-messages", "2", "--mailbox-bytes", "20000").start()
    homes = users_logged_in(srv, tmp_path)
    yield srv, homes
    srv.stop(signal.SIGKILL)




def test_full_mailbox_is_a_clear_refusal_and_nothing_stored_is_lost(pair):
    srv, homes = pair
    for text in ("one", "two"):
        assert sc(homes["alice"], "send", "--to", "bob", text).returncode == 0
    r = sc(homes["alice"], "send", "--to", "bob", "three")
    assert r.returncode == 9, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert lines[0].startswith("securecomm: error: server: bob's mailbox is full (2 messages waiting; the limit is 2)")
    assert lines[1].startswith("securecomm: hint: ") and "securecomm inbox" in lines[1]
    assert "Traceback" not in r.stderr.decode()
    srv.wait_log("direct message refused: mailbox is full")
    assert "to bob" not in srv.log  # the log says not who writes to whom (attacker's check)
    assert mailbox_count(srv) == 2
    got = sc(homes["bob"], "inbox", "--json")
    assert [json.loads(x)["body"] for x in got.stdout.splitlines()] == ["one", "two"]
    assert sc(homes["alice"], "send", "--to", "bob", "three").returncode == 0  # room again once read


def test_mailbox_byte_limit_through_the_cli(pair):
    srv, homes = pair
    big = b"x" * 12000  # one fits under 20,000 bytes, two do not
    assert sc(homes["alice"], "send", "--to", "bob", "-", input=big).returncode == 0
    r = sc(homes["alice"], "send", "--to", "bob", "-", input=big)
    assert r.returncode == 9
    assert b"bytes waiting and this message is" in r.stderr and b"the limit is 20000 bytes" in r.stderr
    assert mailbox_count(srv) == 1
    assert sc(homes["alice"], "send", "--to", "bob", "small").returncode == 0  # a small one still fits


# -- issue 10, item 10: a size limit is a refusal with a hint, not an integrity failure ----------
@pytest.mark.parametrize("to", [(), ("--to", "bob")])
def test_5mb_message_is_refused_with_the_limit_and_a_hint(pair, to):
    from securecomm.crypto.envelope import MAX_BODY_SIZE

    srv, homes = pair
    r = sc(homes["alice"], "send", *to, "-", input=b"m" * (5 * 1000 * 1000))
    assert r.returncode == 9, r.stderr
    err = r.stderr.decode().splitlines()
    assert err[0] == f"securecomm: error: message is larger than the limit of {MAX_BODY_SIZE} bytes; nothing was sent"
    if to:  # to a user, any size goes as a file (a new user was told to split it)
        assert err[1] == "securecomm: hint: send it as a file, of any size: securecomm send --to bob --file PATH"
    else:
        assert err[1].startswith(f"securecomm: hint: send at most {MAX_BODY_SIZE} bytes at a time")
        assert "split -b" in err[1] and "encrypt -r USER" not in err[1]  # encrypt -r takes no user name
    assert len(err) == 2  # no traceback
    assert mailbox_count(srv) == 0


# -- attack report item 3: mail from a removed sender --------------------------------------------
@pytest.fixture
def trio(tmp_path):
    srv = ServerProc(tmp_path / "srv", "--mailbox-messages", "3").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob", "mallory"))
    yield srv, homes
    srv.stop(signal.SIGKILL)


def test_removing_a_sender_deletes_its_waiting_mail_and_frees_the_mailbox(trio):
    srv, homes = trio
    for i in range(3):
        assert sc(homes["mallory"], "send", "--to", "bob", f"spam {i}").returncode == 0
    assert sc(homes["alice"], "send", "--to", "bob", "hello").returncode == 9  # full of mallory's mail
    r = sc(srv.home, "user", "remove", "mallory", "--yes")
    assert r.returncode == 0, r.stderr
    assert mailbox_count(srv) == 0  # before: 3 rows never offered, never acknowledged, still counted
    r = sc(homes["alice"], "send", "--to", "bob", "hello")  # the server recounts: the counter moved
    assert r.returncode == 0, r.stderr
    got = sc(homes["bob"], "inbox", "--json")
    assert [json.loads(x)["body"] for x in got.stdout.splitlines()] == ["hello"]
    assert mailbox_count(srv) == 0


def test_migration_drops_mail_that_earlier_removals_left(tmp_path):
    import sqlite3

    from securecomm.store import db

    path = tmp_path / "old.db"
    con = sqlite3.connect(path, isolation_level=None)
    for script in db.MIGRATIONS[:4]:  # a version-4 database, as the previous release left it
        for statement in filter(str.strip, script.split(";")):
            con.execute(statement)
    con.execute("PRAGMA user_version = 4")
    con.execute("INSERT INTO users (id, name, role, password_hash, created_at) VALUES (1, 'bob', 'user', 'h', 0)")
    con.execute("INSERT INTO mailbox (recipient_id, sender_id, msg_id, stored_at_ms, envelope) VALUES "
                "(1, 1, x'01', 0, x'00'), (1, 7, x'02', 0, x'00')")  # 7: a sender removed before this fix
    con.close()
    store = db.Store(path)
    try:
        assert store.count_mail() == 1
        assert [m.sender for m in store.pending_mail(1)] == ["bob"]
    finally:
        store.close()


# -- attack report item 8: messages to the server have a per-user limit ------------------------------
@pytest.fixture
def capped(tmp_path):
    srv = ServerProc(tmp_path / "srv", "--send-messages", "2", "--send-bytes", "30000").start()
    homes = users_logged_in(srv, tmp_path)
    yield srv, homes
    srv.stop(signal.SIGKILL)


def stored_to_server(srv: ServerProc, name: str) -> int:
    import sqlite3

    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return int(con.execute("SELECT COUNT(*) FROM messages JOIN users ON users.id = messages.sender_id "
                               "WHERE users.name = ?", (name,)).fetchone()[0])
    finally:
        con.close()


def test_messages_to_the_server_stop_at_the_per_user_count(capped):
    srv, homes = capped
    for text in ("one", "two"):
        assert sc(homes["alice"], "send", text).returncode == 0
    r = sc(homes["alice"], "send", "three")
    assert r.returncode == 9, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert lines[0] == ("securecomm: error: server: your storage for messages to the server is full (2 messages "
                        "stored; the limit is 2); nothing was stored, and nothing already stored was dropped")
    assert lines[1].startswith("securecomm: hint: ") and "--send-messages" in lines[1]
    assert len(lines) == 2  # no traceback
    srv.wait_log("user=alice message refused: your storage for messages to the server is full")
    assert stored_to_server(srv, "alice") == 2
    assert sc(homes["bob"], "send", "bob has his own limit").returncode == 0  # per user, not per server
    assert stored_to_server(srv, "bob") == 1


def test_messages_to_the_server_stop_at_the_per_user_bytes(capped):
    srv, homes = capped
    big = b"x" * 20000  # one fits under 30,000 bytes of envelopes, two do not
    assert sc(homes["alice"], "send", "-", input=big).returncode == 0
    r = sc(homes["alice"], "send", "-", input=big)
    assert r.returncode == 9
    assert b"bytes stored and this message is" in r.stderr and b"the limit is 30000 bytes" in r.stderr
    assert sc(homes["alice"], "send", "small").returncode == 0  # a small one still fits
    assert stored_to_server(srv, "alice") == 2
