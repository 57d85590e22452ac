"""The PostgreSQL store beyond what it shares with SQLite (tests/test_store.py runs those on both):
schema versions, durability settings, a lost connection, and `securecomm db migrate|copy`.

A private PostgreSQL per test session (tests/cluster.py), a fresh database per test; no mocks."""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
import time

import psycopg
import pytest

from securecomm.errors import SchemaVersionError, StoreUnavailableError
from securecomm.store import pgfiles, postgres, transfer
from securecomm.store.db import ACCOUNT_GONE, NewDirect, NewMessage, Store
from securecomm.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from tests.cluster import free_port


def _set_version(url: str, version: int) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("UPDATE securecomm_schema SET version = %s", (version,))


def _build_version(url: str, version: int) -> None:
    """A database as an older securecomm left it: only the first `version` migrations."""
    with psycopg.connect(url) as con:
        con.execute(postgres._VERSION_TABLE)
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                con.execute(statement)
        con.execute("INSERT INTO securecomm_schema (version) VALUES (%s)", (version,))


def test_migration_numbers_match_sqlite():
    from securecomm.store import db

    assert len(db.MIGRATIONS) == SCHEMA_VERSION


def test_an_empty_database_is_refused_with_the_command_that_creates_it(pg_url):
    with pytest.raises(SchemaVersionError) as e:
        PostgresStore(pg_url)
    assert "has no securecomm schema yet" in e.value.message
    assert e.value.hint == f"create it with: securecomm db migrate --db {pg_url}"


def test_an_older_schema_is_refused_then_upgraded_by_migrate(pg_url, sc):
    _build_version(pg_url, 3)
    with pytest.raises(SchemaVersionError) as e:
        PostgresStore(pg_url)
    assert f"older (version 3) than this securecomm (version {SCHEMA_VERSION})" in e.value.message
    assert "upgrade it with: securecomm db migrate --db" in (e.value.hint or "")
    result = sc("db", "migrate", "--db", pg_url)
    assert result.exit_code == 0, result.output
    assert f"is at version {SCHEMA_VERSION} (was 3)" in result.output
    store = PostgresStore(pg_url)
    assert store.schema_version == SCHEMA_VERSION and store.account_changes() == 0  # migration 4's counter
    store.close()


def test_a_newer_schema_is_refused_and_never_downgraded(pg_url, sc):
    PostgresStore(pg_url, migrate=True).close()
    _set_version(pg_url, SCHEMA_VERSION + 4)
    with pytest.raises(SchemaVersionError) as e:
        PostgresStore(pg_url)
    assert f"newer (version {SCHEMA_VERSION + 4})" in e.value.message
    result = sc("db", "migrate", "--db", pg_url)
    assert result.exit_code == 2
    assert "securecomm: error: the schema at" in result.output and "is newer" in result.output
    assert "securecomm: hint: install the securecomm version that migrated it" in result.output


def test_migrate_twice_and_at_once_is_harmless(pg_url, sc):
    """Relays (or operators) migrating at the same moment wait for each other on an advisory lock."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            PostgresStore(pg_url, migrate=True).close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    result = sc("db", "migrate", "--db", pg_url)
    assert result.exit_code == 0 and f"is at version {SCHEMA_VERSION}" in result.output
    assert "(was" not in result.output


def test_commits_are_durable_whatever_the_database_default(pg_url):
    PostgresStore(pg_url, migrate=True).close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        dbname = con.info.dbname
        con.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')  # a test's own database name
    store = PostgresStore(pg_url)
    assert store.db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    store.close()


def test_unreachable_database_names_the_url_without_its_password(sc):
    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{free_port()}/securecomm"
    result = sc("db", "migrate", "--db", url)
    assert result.exit_code == 7
    first = result.output.splitlines()[0]
    assert first.startswith("securecomm: error: cannot reach the PostgreSQL database at "
                            f"postgresql://alice@127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert "s3cret-pw" not in result.output and "Traceback" not in result.output


def test_a_sqlite_path_is_not_a_database_url(sc, tmp_path):
    result = sc("db", "migrate", "--db", str(tmp_path / "x.db"))
    assert result.exit_code == 2
    assert "securecomm: error: --db must be a PostgreSQL URL" in result.output


def test_a_lost_connection_refuses_the_batch_then_reconnects(pg_url, pg_server):
    """No receipt without a commit: the batch in flight fails with the retryable error, and the next works."""
    store = PostgresStore(pg_url, migrate=True)
    alice = store.add_user("alice", "h").id
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store.db.info.backend_pid,))
    first = NewMessage(alice, b"1" * 16, bytes(32), 0, b"env")
    with pytest.raises(StoreUnavailableError) as e:
        store.store_messages([first])
    assert e.value.exit_code == 7 and pg_url in e.value.message
    second = NewMessage(alice, b"2" * 16, bytes(32), 0, b"env")
    (stored,) = store.store_messages([second])  # a new connection
    assert not stored.duplicate and stored.refused is None
    assert store.count_messages() == 1  # the first was never committed
    store.close()


def test_same_message_in_one_batch_is_stored_once_with_one_seq(pg_url):
    store = PostgresStore(pg_url, migrate=True)
    alice, bob = store.add_user("alice", "h").id, store.add_user("bob", "h").id
    m = NewDirect(alice, bob, b"m" * 16, b"d" * 32, b"env")
    first, again = store.store_messages([m, m])
    assert (first.duplicate, again.duplicate) == (False, True) and first.seq is not None
    assert [i.seq for i in store.pending_mail(bob)] == [first.seq]
    store.close()


def test_sql_is_parameterised():
    """No SQL built from strings: no f-string, %-formatting or .format() near an execute."""
    for module in (postgres, transfer, pgfiles):
        source = inspect.getsource(module)
        assert not re.search(r"execute\(f[\"']", source), module.__name__
        assert '" %' not in source and ".format(" not in source, module.__name__


# -- db copy ----------------------------------------------------------------------------------------
def _single_relay(path):
    """A SQLite deployment with gaps that matter: a removed user's id and an acknowledged message's seq."""
    s = Store(path)
    alice, bob = s.add_user("alice", "ha"), s.add_user("bob", "hb")
    s.add_user("carol", "hc")
    s.remove_user("carol")  # id 3 must never be handed out again
    s.set_identity(alice.id, b"I" * 64, b"F" * 32)
    out = s.store_messages([NewDirect(alice.id, bob.id, bytes([i]) * 16, bytes(32), bytes([i]) * 50)
                            for i in range(3)] + [NewMessage(alice.id, b"s" * 16, b"h" * 32, 7, b"to the server")])
    assert s.take_mail(bob.id, out[2].seq) is not None  # the newest row: its seq must not be reused either
    changes = s.account_changes()
    s.close()
    return alice.id, bob.id, [o.seq for o in out[:2]], changes


def test_copy_moves_everything_and_keeps_ids_and_seqs(sc, tmp_path, pg_url):
    path = tmp_path / "single.db"
    alice, bob, seqs, changes = _single_relay(path)
    result = sc("db", "copy", "--from", str(path), "--to", pg_url)
    assert result.exit_code == 0, result.output
    counts = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+ok$", result.output, re.M)}
    assert counts == {"users": (2, 2), "messages": (1, 1), "mailbox": (2, 2), "direct_ids": (3, 3),
                      "user_keys": (0, 0), "devices": (0, 0), "prekeys": (0, 0), "pairings": (0, 0),
                      "removed_devices": (0, 0), "device_direct_ids": (0, 0), "files": (0, 0), "file_bytes": (0, 0)}
    store = PostgresStore(pg_url)
    assert store.get_user("alice").id == alice and store.get_user("alice").identity == b"I" * 64
    assert store.get_user("bob").password_hash == "hb" and store.account_changes() == changes
    waiting = store.pending_mail(bob)
    assert [(w.seq, w.sender, w.envelope) for w in waiting] == [(seqs[0], "alice", bytes([0]) * 50),
                                                                (seqs[1], "alice", bytes([1]) * 50)]
    retry = store.store_messages([NewDirect(alice, bob, bytes([2]) * 16, bytes(32), b"x")])[0]
    assert retry.duplicate  # the delivered one's id came along: a retry is answered, not delivered twice
    new = store.store_messages([NewDirect(alice, bob, b"n" * 16, bytes(32), b"x")])[0]
    assert new.seq == seqs[1] + 2  # above the acknowledged seq, not a reuse of it
    assert store.add_user("dave", "hd").id == 4  # carol's id 3 stays retired
    store.close()


def test_copy_keeps_devices_and_which_device_a_message_is_for(sc, tmp_path, pg_url):
    """Before, `db copy` left the device tables behind and copied a version-2 message without its
    device: on PostgreSQL it would have been offered to every session of the account."""
    from securecomm.crypto import devices as D
    from securecomm.crypto import prekeys as K
    from securecomm.crypto.identity import PrivateIdentity
    from securecomm.store.devices import DeviceStore

    path = tmp_path / "single.db"
    s = Store(path)
    alice, bob = s.add_user("alice", "ha"), s.add_user("bob", "hb")
    key, phone = D.UserKey.generate(), PrivateIdentity.generate("x25519")
    cert = D.DeviceCert.sign(key, "bob", phone.public, "phone", 0)
    devices = DeviceStore(s.device_sql())
    devices.publish_list(bob.id, D.DeviceList.sign(key, "bob", 1, 0, [cert.device_id]), [cert])
    devices.upload_prekeys(cert.device_id, [p.sign(phone) for p in K.generate_batch(phone, 1, 3)], None)
    (stored,) = s.store_messages([NewDirect(alice.id, bob.id, b"m" * 16, bytes(32), b"v2", b"S" * 32,
                                            cert.device_id)])
    s.close()
    result = sc("db", "copy", "--from", str(path), "--to", pg_url)
    assert result.exit_code == 0, result.output
    store = PostgresStore(pg_url)
    try:
        assert [m.seq for m in store.pending_mail(bob.id, device=cert.device_id)] == [stored.seq]
        assert store.pending_mail(bob.id) == []  # not offered to a session that is not that device
        pg = DeviceStore(store.device_sql())
        assert pg.current(bob.id) is not None and pg.available(cert.device_id) == 3
        again = store.store_messages([NewDirect(alice.id, bob.id, b"m" * 16, bytes(32), b"v2", b"S" * 32,
                                                cert.device_id)])[0]
        assert again.duplicate
    finally:
        store.close()


def test_copy_moves_files_complete_and_unfinished(sc, tmp_path, pg_url):
    """Files through the server live beside the SQLite file; on PostgreSQL any relay must serve them."""
    import hashlib

    from securecomm.store.files import FileStore
    from securecomm.store.pgfiles import PgFileStore

    path = tmp_path / "single.db"
    _single_relay(path)
    whole, half = os.urandom(600_000), os.urandom(300_000)  # more than one 256 KiB chunk each
    files = FileStore(tmp_path / "files")
    phone, laptop = b"\x01" * 32, b"\x02" * 32  # the devices the complete file still waits for (4.4)
    done = files.offer("alice", "bob", len(whole), hashlib.sha256(whole).digest(), None, [phone, laptop]).file_id
    files.put("alice", done, 0, whole)
    cut = files.offer("alice", "bob", len(half), hashlib.sha256(half).digest()).file_id
    files.put("alice", cut, 0, half[:1000])
    files.close()
    result = sc("db", "copy", "--from", str(path), "--to", pg_url)
    assert result.exit_code == 0, result.output
    counts = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+ok$", result.output, re.M)}
    assert counts["files"] == (2, 2) and counts["file_bytes"] == (601_000, 601_000)
    moved = PgFileStore(pg_url)
    row, f = moved.open_for("bob", done)
    with f:
        assert f.read() == whole and row.sender == "alice"
    assert moved.offer("alice", "bob", len(half), hashlib.sha256(half).digest(), cut).received == 1000
    assert moved.put("alice", cut, 1000, half[1000:]) == (len(half), True)  # its digest checked from the rows
    assert moved.fetchers(done) == {phone, laptop}
    assert moved.done("bob", done, phone, [phone, laptop]) is False  # still waits for the laptop after the copy
    moved.close()


def test_copy_refuses_a_database_that_holds_data(sc, tmp_path, pg_url):
    path = tmp_path / "single.db"
    _single_relay(path)
    assert sc("db", "copy", "--from", str(path), "--to", pg_url).exit_code == 0
    again = sc("db", "copy", "--from", str(path), "--to", pg_url)
    assert again.exit_code == 10
    assert "already holds securecomm data" in again.output
    store = PostgresStore(pg_url)
    assert len(store.list_users()) == 2  # nothing was copied twice
    store.close()


def test_copy_from_a_missing_file(sc, tmp_path, pg_url):
    result = sc("db", "copy", "--from", str(tmp_path / "nope.db"), "--to", pg_url)
    assert result.exit_code == 3 and "securecomm: error: no SQLite database at" in result.output


def test_postgres_down_refuses_at_once_then_resumes_after_backoff(pg_url, pg_server, caplog):
    """PostgreSQL stopped under a relay: every batch is refused (retryable, nothing committed), reconnect
    attempts back off instead of costing each batch a connect, and sends resume once it is back."""
    store = PostgresStore(pg_url, migrate=True)
    alice = store.add_user("alice", "h").id
    now = [1000.0]
    store.clock = lambda: now[0]
    msg = [NewMessage(alice, bytes([i]) * 16, bytes(32), 0, b"env") for i in range(4)]
    pg_server.stop()
    try:
        with pytest.raises(StoreUnavailableError, match="lost the PostgreSQL database"):
            store.store_messages([msg[0]])
        with pytest.raises(StoreUnavailableError, match="cannot reach the PostgreSQL database"):
            store.store_messages([msg[1]])  # one reconnect attempt, which fails: the backoff starts
        with pytest.raises(StoreUnavailableError, match=r"unreachable; reconnecting every 0\.1 s"):
            store.store_messages([msg[2]])  # within the backoff: refused without an attempt
    finally:
        pg_server.start()
    with pytest.raises(StoreUnavailableError, match="reconnecting every"):
        store.store_messages([msg[2]])  # back, but the backoff has not passed yet
    now[0] += 0.1
    (stored,) = store.store_messages([msg[3]])
    assert stored.refused is None and not stored.duplicate
    assert store.count_messages() == 1  # no batch refused during the outage was committed
    logged = caplog.text
    assert "lost the PostgreSQL database" in logged and "reconnected to the PostgreSQL database" in logged
    store.close()


def test_a_batch_waits_for_a_removal_in_progress_and_leaves_no_orphan_mail(pg_url):
    """`user remove` (another process) holds the account row while it deletes; a relay's batch for that
    account waits on the row lock and then finds the account gone, instead of reading the old row and
    storing mail that no one can be offered."""
    store = PostgresStore(pg_url, migrate=True)
    alice, bob = store.add_user("alice", "h").id, store.add_user("bob", "h").id
    results: list[object] = []
    with psycopg.connect(pg_url) as remover:  # a transaction, as PostgresStore.remove_user runs it
        remover.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (alice,))
        remover.execute("DELETE FROM mailbox WHERE recipient_id = %s OR sender_id = %s", (alice, alice))
        remover.execute("DELETE FROM users WHERE id = %s", (alice,))
        pid = store.db.info.backend_pid
        batch = threading.Thread(target=lambda: results.extend(
            store.store_messages([NewDirect(alice, bob, b"o" * 16, bytes(32), b"env")])))
        batch.start()
        with psycopg.connect(pg_url, autocommit=True) as watch:  # the event: the batch waits on a lock
            for _ in range(6000):
                row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    break
                watch.execute("SELECT pg_sleep(0.01)")
            else:
                pytest.fail("the batch never waited for the removal")
    batch.join(60)
    (stored,) = results
    assert stored.refused == ACCOUNT_GONE
    assert store.count_mail() == 0
    store.close()


def test_seqs_for_one_recipient_become_visible_in_order_across_relays(pg_url):
    """Relay A has drawn seq N for bob and not committed; relay B's batch for bob waits, so B's seq (N+1)
    is never visible while N is not (a reader would move past N and skip it)."""
    store = PostgresStore(pg_url, migrate=True)
    alice, bob = store.add_user("alice", "h").id, store.add_user("bob", "h").id
    results: list[object] = []
    with psycopg.connect(pg_url) as relay_a:  # another relay's batch, caught mid-transaction
        relay_a.execute("SELECT pg_advisory_xact_lock(%s)", (-bob,))
        (seq_a,) = relay_a.execute("INSERT INTO mailbox (recipient_id, sender_id, msg_id, stored_at_ms, envelope) "
                                   "VALUES (%s, %s, %s, 0, %s) RETURNING id", (bob, alice, b"a" * 16, b"A")).fetchone()
        pid = store.db.info.backend_pid
        batch = threading.Thread(target=lambda: results.extend(
            store.store_messages([NewDirect(alice, bob, b"b" * 16, bytes(32), b"B")])))
        batch.start()
        with psycopg.connect(pg_url, autocommit=True) as watch:
            for _ in range(6000):
                row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    break
                watch.execute("SELECT pg_sleep(0.01)")
            else:
                pytest.fail("relay B's batch did not wait for relay A's")
            assert watch.execute("SELECT COUNT(*) FROM mailbox").fetchone()[0] == 0  # neither is visible yet
    batch.join(60)
    (stored,) = results
    assert stored.seq > seq_a
    assert [(i.seq, i.envelope) for i in store.pending_mail(bob)] == [(seq_a, b"A"), (stored.seq, b"B")]
    store.close()


# -- user add/list/passwd/remove --db URL -----------------------------------------------------------
def test_user_commands_on_a_postgresql_url(sc, pg_url):
    assert sc("db", "migrate", "--db", pg_url).exit_code == 0
    added = sc("user", "add", "Alice", "--db", pg_url, "--password-stdin", input="correct horse battery\n")
    assert added.exit_code == 0, added.output
    assert f"created user alice in PostgreSQL {pg_url}" in added.output
    listed = sc("user", "list", "--db", pg_url, "--json")
    assert [u["name"] for u in json.loads(listed.stdout)] == ["alice"]
    old_hash = PostgresStore(pg_url).get_user("alice").password_hash
    changed = sc("user", "passwd", "alice", "--db", pg_url, "--password-stdin", input="another horse battery\n")
    assert changed.exit_code == 0, changed.output
    store = PostgresStore(pg_url)
    assert store.get_user("alice").password_hash != old_hash and store.account_changes() == 1
    assert sc("user", "remove", "alice", "--yes", "--db", pg_url).exit_code == 0
    assert store.list_users() == []
    store.close()


def test_user_add_on_a_database_without_schema_says_how_to_create_it(sc, pg_url):
    result = sc("user", "add", "alice", "--db", pg_url, "--password-stdin", input="correct horse battery\n")
    assert result.exit_code == 2
    assert "securecomm: error: the PostgreSQL database at" in result.output
    assert f"securecomm: hint: create it with: securecomm db migrate --db {pg_url}" in result.output


# -- quotas across relays -----------------------------------------------------------------------------
def test_mailbox_quota_holds_across_two_relays(pg_url):
    """Each relay counted a recipient's mailbox itself and kept the count in step with its own inserts
    only: relay A, having counted 2, admitted a fourth message after relay B stored the third (limit 3),
    and refused after B's recipient took mail, until a recount a minute later."""
    from securecomm.store.quota import MailboxLimits

    PostgresStore(pg_url, migrate=True).close()
    limits = MailboxLimits(messages=3, bytes=10**6)
    a, b = PostgresStore(pg_url, mailbox_limits=limits), PostgresStore(pg_url, mailbox_limits=limits)
    alice, bob = a.add_user("alice", "h").id, a.add_user("bob", "h").id

    def direct(store, i):
        return store.store_messages([NewDirect(alice, bob, i.to_bytes(16, "big"), bytes(32), b"e" * 10)])[0]

    assert [direct(a, i).refused for i in (1, 2)] == [None, None]
    assert direct(b, 3).refused is None
    assert direct(a, 4).refused is not None  # the mailbox holds 3: relay A knows it too
    assert direct(b, 5).refused is not None
    assert b.count_mail() == 3
    first = b.pending_mail(bob)[0]
    assert b.take_mail(bob, first.seq) is not None  # delivered through relay B
    assert direct(a, 6).refused is None  # room again, on relay A at once
    assert direct(a, 7).refused is not None
    a.close()
    b.close()


def test_send_quota_holds_across_two_relays(pg_url):
    from securecomm.store.quota import SendLimits

    PostgresStore(pg_url, migrate=True).close()
    limits = SendLimits(messages=2, bytes=10**6)
    a, b = PostgresStore(pg_url, send_limits=limits), PostgresStore(pg_url, send_limits=limits)
    alice = a.add_user("alice", "h").id

    def send(store, i):
        return store.store_messages([NewMessage(alice, i.to_bytes(16, "big"), bytes(32), 0, b"e" * 10)])[0]

    assert send(a, 1).refused is None and send(b, 2).refused is None
    assert send(a, 3).refused is not None and send(b, 4).refused is not None
    assert a.count_messages() == 2
    assert send(a, 2).duplicate  # a retry of a stored one keeps its receipt
    a.close()
    b.close()


def test_removing_a_user_frees_the_quota_their_mail_held(pg_url):
    from securecomm.store.quota import MailboxLimits

    PostgresStore(pg_url, migrate=True).close()
    limits = MailboxLimits(messages=2, bytes=10**6)
    a, b = PostgresStore(pg_url, mailbox_limits=limits), PostgresStore(pg_url, mailbox_limits=limits)
    alice, bob, carol = (a.add_user(n, "h").id for n in ("alice", "bob", "carol"))
    for i in (1, 2):
        assert a.store_messages([NewDirect(carol, bob, bytes([i]) * 16, bytes(32), b"x")])[0].refused is None
    assert a.store_messages([NewDirect(alice, bob, b"a" * 16, bytes(32), b"x")])[0].refused is not None
    b.remove_user("carol")  # on another relay, or `securecomm user remove --db URL`
    assert a.store_messages([NewDirect(alice, bob, b"a" * 16, bytes(32), b"x")])[0].refused is None
    a.close()
    b.close()


def test_each_new_direct_names_the_seq_before_it_whichever_relay_stored_it(pg_url):
    """What lets a woken relay push a carried message without reading the store (server/relay.py)."""
    PostgresStore(pg_url, migrate=True).close()
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    alice, bob, carol = (a.add_user(n, "h").id for n in ("alice", "bob", "carol"))

    def direct(store, sender, to, i):
        return NewDirect(sender, to, i.to_bytes(16, "big"), bytes(32), b"e")

    first, second = a.store_messages([direct(a, alice, bob, 1), direct(a, alice, bob, 2)])
    assert (first.prev_seq, second.prev_seq) == (0, first.seq)  # an empty mailbox, then the one before
    (third,) = b.store_messages([direct(b, carol, bob, 3)])  # another relay
    assert third.prev_seq == second.seq
    assert b.take_mail(bob, third.seq) is not None
    (fourth,) = a.store_messages([direct(a, alice, bob, 4)])
    assert fourth.prev_seq == second.seq  # the highest still waiting
    (again,) = b.store_messages([direct(b, alice, bob, 4)])
    assert again.duplicate and again.prev_seq is None  # a retry pushes nothing
    a.close()
    b.close()


def test_the_read_connection_reconnects_off_the_callers_thread(pg_url):
    """The reader serves lookups on the relay's event loop: a reconnect to a blackholed host used to
    block it for up to CONNECT_TIMEOUT (5 s) per attempt, stalling every session of the relay."""
    import socket

    PostgresStore(pg_url, migrate=True).close()
    store = PostgresStore(pg_url, readonly=True)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # connections complete in the kernel and then hear nothing: a black hole
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._db.info.backend_pid,))
        store.url = f"postgresql://postgres@127.0.0.1:{hole.getsockname()[1]}/nothing"
        with pytest.raises(StoreUnavailableError):
            store.get_user("alice")  # the connection is gone
        with pytest.raises(StoreUnavailableError):
            store.get_user("alice")  # answered at once ...
        assert store._reconnector is not None and store._reconnector.is_alive()  # ... while it still waits
        store._reconnector.join(30)  # the black hole times out
        store.url = pg_url  # the database is back
        store.clock = lambda: time.monotonic() + 60  # past the backoff
        with pytest.raises(StoreUnavailableError):
            store.get_user("alice")  # starts the next attempt
        store._reconnector.join(30)
        assert store.get_user("alice") is None  # reconnected: lookups work again
    finally:
        hole.close()
        store.close()
