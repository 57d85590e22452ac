"""The SQLite store and password hashing, without a server."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from securecomm.errors import ExistsError, UsageError
from securecomm.store import passwords
from securecomm.store.db import MIGRATIONS, NewMessage, Store, normalise_name


# PostgreSQL starts a private server process (tests/cluster.py): slow, like the other server tests
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def open_store(request, tmp_path):
    """Opens the store under test, on the same database each call (a restart, or another process such as
    `securecomm user remove`): SQLite in a file, or PostgreSQL in a fresh database (tests/cluster.py)."""
    opened = []
    if request.param == "sqlite":
        def opener(**limits):
            return Store(tmp_path / "data" / "db.sqlite", **limits)
    else:
        from securecomm.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")
        PostgresStore(url, migrate=True).close()  # `securecomm db migrate`: PostgreSQL is never migrated on open

        def opener(**limits):
            return PostgresStore(url, **limits)

    def tracked(**limits):
        opened.append(opener(**limits))
        return opened[-1]

    yield tracked
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store):
    return open_store()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store(tmp_path / "data" / "db.sqlite")
    yield s
    s.close()


def test_schema_version_and_pragmas(sqlite_store, tmp_path):
    store = sqlite_store
    assert store.schema_version == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert stat.S_IMODE((tmp_path / "data" / "db.sqlite").stat().st_mode) == 0o600


def test_reopen_does_not_migrate_twice(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    s = Store(path)
    assert s.schema_version == len(MIGRATIONS)
    s.close()


@pytest.mark.parametrize("bad", ["", "a" * 33, "al ice", "x'; DROP TABLE users;--", "ümlaut", "a/b",
                                 "alice\n", "\u212aate"])  # trailing newline; KELVIN SIGN lowers to "k"
def test_bad_names(bad):
    with pytest.raises(UsageError):
        normalise_name(bad)


def test_names_fold_ascii_case_only():
    assert normalise_name("Alice.B_2-x") == "alice.b_2-x"


def test_names_are_case_insensitive_unique(store):
    store.add_user("Alice", "h")
    assert store.get_user("ALICE").name == "alice"
    with pytest.raises(ExistsError):
        store.add_user("alice", "h")


def test_injection_shaped_lookup_is_just_a_miss(store):
    store.add_user("bob", "h")
    assert store.get_user("bob' OR '1'='1") is None
    assert [u.name for u in store.list_users()] == ["bob"]


def test_lockout_after_failures(store):
    u = store.add_user("carol", "h")
    for _ in range(4):
        store.record_login(u.id, False)
    assert not store.get_user("carol").locked()
    store.record_login(u.id, False)
    assert store.get_user("carol").locked()
    store.set_password("carol", "h2")
    assert not store.get_user("carol").locked()


def test_group_commit_dedupes(store):
    u = store.add_user("dave", "h")
    m = NewMessage(u.id, b"i" * 16, b"d" * 32, 1, b"env")
    first = store.store_messages([m, m])
    assert [r.duplicate for r in first] == [False, True]
    again = store.store_messages([m])
    assert again[0].duplicate and again[0].stored_at_ms == first[0].stored_at_ms
    assert store.count_messages() == 1


def test_sql_is_parameterised():
    # every execute() in the store passes values as parameters: no f-string or % near SQL
    import inspect

    from securecomm.store import db

    source = inspect.getsource(db)
    # the one exception: PRAGMA takes no parameters, and the value is int()-cast
    source = source.replace('execute(f"PRAGMA user_version = {int(number)}")', "")
    assert 'execute(f"' not in source and "execute(f'" not in source and '" %' not in source


def test_argon2id_parameters_and_verify():
    h = passwords.hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password("correct horse", h)
    assert not passwords.verify_password("wrong horse", h)
    assert not passwords.verify_password("correct horse", "not a hash")
    assert not passwords.needs_rehash(h)


def test_weaker_hash_needs_rehash():
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    weak = Argon2id(salt=b"s" * 16, length=32, iterations=1, lanes=1, memory_cost=8192).derive_phc_encoded(b"pw")
    assert passwords.needs_rehash(weak)
    assert passwords.verify_password("pw", weak)


@pytest.mark.parametrize("pw", ["short", ""])
def test_password_policy(pw):
    with pytest.raises(UsageError):
        passwords.check_policy(pw)


def test_database_file_is_plain_sqlite(sqlite_store, tmp_path):
    sqlite_store.add_user("erin", passwords.hash_password("long enough"))
    con = sqlite3.connect(tmp_path / "data" / "db.sqlite")
    (phc,) = con.execute("SELECT password_hash FROM users WHERE name = ?", ("erin",)).fetchone()
    assert "long enough" not in phc and phc.startswith("$argon2id$")


# -- issue 10: per-recipient mailbox limits --------------------------------------------------
def _direct(sender: int, recipient: int, n: int, size: int = 100):
    from securecomm.store.db import NewDirect

    return NewDirect(sender, recipient, n.to_bytes(16, "big"), bytes(32), bytes([n % 256]) * size)


def _mail_store(open_store, **limits):
    from securecomm.store.quota import MailboxLimits

    s = open_store(mailbox_limits=MailboxLimits(**limits))
    alice, bob = s.add_user("alice", "x"), s.add_user("bob", "x")
    return s, alice.id, bob.id


def test_mailbox_message_limit_refuses_without_losing_anything(open_store):
    s, alice, bob = _mail_store(open_store, messages=3, bytes=10**9)
    out = s.store_messages([_direct(alice, bob, i) for i in range(5)])  # one batch, one transaction
    assert [o.refused is None for o in out] == [True, True, True, False, False]
    assert "3 messages waiting; the limit is 3" in (out[3].refused or "")
    assert [m.envelope[0] for m in s.pending_mail(bob)] == [0, 1, 2]  # what was stored stays
    # the refused one left no trace: once bob has read one, the same message is stored, not a "duplicate"
    assert s.take_mail(bob, out[0].seq) is not None
    again = s.store_messages([_direct(alice, bob, 3)])[0]
    assert again.refused is None and not again.duplicate and again.seq is not None
    # a retry of a stored message still gets its original receipt, even with the mailbox full
    retry = s.store_messages([_direct(alice, bob, 1)])[0]
    assert retry.duplicate and retry.refused is None
    # another recipient has a mailbox of their own
    assert s.store_messages([_direct(bob, alice, 9)])[0].refused is None
    s.close()


def test_mailbox_byte_limit(open_store):
    s, alice, bob = _mail_store(open_store, messages=100, bytes=1000)
    out = s.store_messages([_direct(alice, bob, i, size=400) for i in range(3)])
    assert [o.refused is None for o in out] == [True, True, False]
    assert "800 bytes waiting and this message is 400; the limit is 1000 bytes" in (out[2].refused or "")
    assert s.store_messages([_direct(alice, bob, 7, size=200)])[0].refused is None  # a smaller one still fits
    s.close()


def test_mailbox_counts_survive_a_restart_and_outside_deletes(open_store):
    from securecomm.store import quota

    s, alice, bob = _mail_store(open_store, messages=2, bytes=10**9)
    s.store_messages([_direct(alice, bob, i) for i in range(2)])
    s.close()
    s = open_store(mailbox_limits=quota.MailboxLimits(2, 10**9))
    assert s.store_messages([_direct(alice, bob, 5)])[0].refused  # counted from the database on first use
    other = open_store()  # e.g. another relay, or an operator's tool, deleting rows behind this one's back
    for item in other.pending_mail(bob):
        assert other.take_mail(bob, item.seq) is not None
    other.close()
    s.mailbox_usage._usage[bob].counted_at -= quota.RECOUNT_AFTER + 1  # the count is old: read again
    assert s.store_messages([_direct(alice, bob, 6)])[0].refused is None
    s.close()


# -- attack report items 3 and 8 ------------------------------------------------------------------
def _sent(sender: int, n: int, size: int = 100) -> NewMessage:
    return NewMessage(sender, n.to_bytes(16, "big"), bytes(32), 0, bytes([n % 256]) * size)


def test_send_limit_refuses_new_messages_but_answers_retries(open_store):
    from securecomm.store.quota import SendLimits

    s = open_store(send_limits=SendLimits(messages=2, bytes=10**9))
    alice, bob = s.add_user("alice", "x").id, s.add_user("bob", "x").id
    first, second, third = s.store_messages([_sent(alice, i) for i in range(3)])  # one transaction
    assert (first.refused, second.refused) == (None, None)
    assert third.refused == "your storage for messages to the server is full (2 messages stored; the limit is 2)"
    retry = s.store_messages([_sent(alice, 0)])[0]  # a retry of a stored one: its original receipt, not a refusal
    assert retry.duplicate and retry.refused is None and retry.stored_at_ms == first.stored_at_ms
    assert s.store_messages([_sent(bob, 9)])[0].refused is None  # per sender
    assert s.count_messages() == 3
    s.close()


def test_removing_a_sender_deletes_its_undelivered_mail_only(open_store):
    s, alice, bob = _mail_store(open_store, messages=2, bytes=10**9)
    s.store_messages([_direct(alice, bob, 1), _direct(bob, alice, 2), _sent(alice, 3)])
    s.remove_user("alice")
    assert s.count_mail() == 0  # mail from alice to bob, and mail waiting for alice
    assert s.count_messages() == 1  # her messages to the server are the server's record
    s.close()


def test_a_mailbox_count_is_read_again_once_the_account_counter_moves(open_store):
    s, alice, bob = _mail_store(open_store, messages=2, bytes=10**9)
    s.store_messages([_direct(alice, bob, i) for i in range(2)])
    assert s.store_messages([_direct(alice, bob, 5)])[0].refused  # full, and the count is now cached
    other = open_store()  # `securecomm user remove` in another process
    other.remove_user("alice")
    other.close()
    carol = s.add_user("carol", "x").id
    assert s.store_messages([_direct(carol, bob, 6)])[0].refused is None  # not a minute later: now
    s.close()


def test_mail_from_a_sender_removed_after_the_checks_is_not_stored(open_store):
    """The server checks a DIRECT, then commits it; a removal in between must not leave an orphan row."""
    from securecomm.store.db import ACCOUNT_GONE

    s, alice, bob = _mail_store(open_store, messages=10, bytes=10**9)
    other = open_store()  # `securecomm user remove` in another process
    other.remove_user("alice")
    other.close()
    late, to_gone = s.store_messages([_direct(alice, bob, 1), _direct(bob, alice, 2)])
    assert late.refused == ACCOUNT_GONE and to_gone.refused == ACCOUNT_GONE
    assert s.count_mail() == 0
    s.close()


# -- one mailbox per device (docs/PROTOCOL.md 6.7) ---------------------------------------------------
D_SENDER, D_LAPTOP, D_PHONE = b"S" * 32, b"L" * 32, b"P" * 32


def test_a_fan_out_to_two_devices_is_two_messages_not_a_retry(store):
    """Regression: before migration 7 the second device's copy (same sender, same msg_id) was taken
    for a retry of the first, answered `duplicate` and never stored."""
    from securecomm.store.db import NewDirect

    a, b = store.add_user("alice", "h"), store.add_user("bob", "h")
    msg_id = b"m" * 16
    copies = [NewDirect(a.id, b.id, msg_id, bytes([i]) * 32, bytes([i]) * 100, D_SENDER, d)
              for i, d in enumerate((D_LAPTOP, D_PHONE))]
    out = store.store_messages(copies)
    assert [o.duplicate for o in out] == [False, False] and all(o.seq for o in out)
    again = store.store_messages(copies[1:])  # a real retry of one copy is still a duplicate
    assert again[0].duplicate and again[0].sha256 == bytes([1]) * 32
    # each device is offered its own copy only; version-1 mail goes to every session as before
    (v1,) = store.store_messages([NewDirect(a.id, b.id, b"v" * 16, bytes(32), b"v1")])
    assert [m.envelope for m in store.pending_mail(b.id, device=D_LAPTOP)] == [bytes([0]) * 100, b"v1"]
    assert [m.envelope for m in store.pending_mail(b.id, device=D_PHONE)] == [bytes([1]) * 100, b"v1"]
    assert [m.envelope for m in store.pending_mail(b.id)] == [b"v1"]
    # an ACK deletes only a row of the acknowledging device (or version 1)
    assert store.take_mail(b.id, out[1].seq, D_LAPTOP) is None
    taken = store.take_mail(b.id, out[0].seq, D_LAPTOP)
    assert taken is not None and (taken.msg_id, taken.sender_id, taken.device) == (msg_id, a.id, D_LAPTOP)
    assert [m.envelope for m in store.pending_mail(b.id, device=D_PHONE)] == [bytes([1]) * 100, b"v1"]
    v1_taken = store.take_mail(b.id, v1.seq, D_PHONE)
    assert v1_taken is not None and v1_taken.device is None
    # the ids are forgotten like version 1's once old enough
    assert store.prune_direct_ids(2**62, 100) >= 3
    assert not store.store_messages(copies[:1])[0].duplicate
