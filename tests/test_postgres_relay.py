"""Relays on PostgreSQL (issue 13, the durable side): real `securecomm serve --db URL` processes, real
TLS on loopback, a private PostgreSQL (tests/cluster.py). The bus between relays is not needed here:
mail committed through one relay is delivered by another from PostgreSQL at the next login."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from securecomm.store.postgres import PostgresStore
from tests.serverproc import ServerProc, add_user, login, sc


@pytest.fixture
def relays(tmp_path: Path, pg_url: str):
    """Two relays sharing one --home (message identity and CA, README "Several relays") and one database."""
    PostgresStore(pg_url, migrate=True).close()
    home = tmp_path / "srv"
    a = ServerProc(home, "--db", pg_url).start()
    b = ServerProc(home, "--db", pg_url).start()
    yield a, b, home
    for relay in (a, b):
        relay.stop(signal.SIGKILL)


def _user(root: Path, srv_home: Path, relay: ServerProc, name: str, url: str) -> Path:
    add_user(srv_home, name, "--db", url)
    client = root / name
    r = login(client, relay, name)
    assert r.returncode == 0, r.stderr
    return client


def test_relays_on_one_database_serve_every_user(tmp_path, relays, pg_url):
    a, b, home = relays
    assert f"store: PostgreSQL {pg_url}" in a.wait_log(r"store: .*")
    alice = _user(tmp_path, home, a, "alice", pg_url)
    bob = _user(tmp_path, home, b, "bob", pg_url)
    sent = sc(alice, "send", "--to", "bob", "from relay a to relay b")
    assert sent.returncode == 0, sent.stderr
    to_server = sc(bob, "send", "hello, server")  # sealed to the shared server identity, stored through b
    assert to_server.returncode == 0 and to_server.stdout.startswith(b"delivered "), to_server.stderr
    got = sc(bob, "inbox", "--json")
    assert got.returncode == 0, got.stderr
    assert [(m["from"], m["body"]) for m in map(json.loads, got.stdout.splitlines())] == \
        [("alice", "from relay a to relay b")]
    store = PostgresStore(pg_url)
    assert (store.count_mail(), store.count_messages()) == (0, 1)  # acknowledged through b; the SEND kept
    store.close()
    assert sc(bob, "inbox", "--json").stdout == b""  # exactly once


def test_postgresql_stopped_refuses_sends_retryably_then_they_resume(tmp_path, relays, pg_url, pg_server):
    a, _, home = relays
    alice = _user(tmp_path, home, a, "alice", pg_url)
    pg_server.stop()
    try:
        refused = sc(alice, "send", "--timeout", "5", "while the database is down")
        assert refused.returncode == 7, refused.stderr
        # a new connection cannot even log in (the account is in the database): refused, retryable, exit 7;
        # a connection already logged in gets UNAVAILABLE for the SEND itself (test_error_table.py)
        assert b"securecomm: error: server: the relay's database is unreachable; retry shortly" in refused.stderr
        assert "lost the PostgreSQL database" in a.wait_log(r"lost the PostgreSQL database")
    finally:
        pg_server.start()
    # the relay's account watch touches the database every second: its reconnect (after the backoff) is the event
    a.wait_log(r"reconnected to the PostgreSQL database", timeout=30)
    resumed = sc(alice, "send", "--timeout", "30", "after it is back")
    assert resumed.returncode == 0 and resumed.stdout.startswith(b"delivered "), resumed.stderr
    store = PostgresStore(pg_url)
    assert store.count_messages() == 1  # only the one with a receipt was stored
    store.close()


def test_serve_refuses_an_unreachable_or_unmigrated_database(tmp_path, pg_url):
    from tests.cluster import free_port

    down = f"postgresql://relay:hunter2-secret@127.0.0.1:{free_port()}/securecomm"
    r = sc(tmp_path / "srv", "serve", "--port", "0", "--db", down)
    assert r.returncode == 7
    assert b"securecomm: error: cannot reach the PostgreSQL database at postgresql://relay@127.0.0.1:" in r.stderr
    assert b"hunter2" not in r.stderr
    r = sc(tmp_path / "srv", "serve", "--port", "0", "--db", pg_url)
    assert r.returncode == 2
    assert f"securecomm: hint: create it with: securecomm db migrate --db {pg_url}".encode() in r.stderr


def test_status_says_which_store_the_relay_uses(tmp_path, relays, pg_url):
    a, _, home = relays
    alice = _user(tmp_path, home, a, "alice", pg_url)
    report = json.loads(sc(alice, "status", "--json").stdout)
    assert report["relay"] == {"store": "postgresql", "bus": "in-process"}
    single = ServerProc(tmp_path / "single").start()  # the default: SQLite in the data folder
    try:
        assert "store: SQLite" in single.wait_log(r"store: SQLite \S+")
        add_user(single.home, "bob")
        bob = tmp_path / "bob"
        assert login(bob, single, "bob").returncode == 0
        shown = sc(bob, "status")
        assert shown.returncode == 0, shown.stderr
        assert re.search(rb"^relay\.store\s+sqlite$", shown.stdout, re.M)
    finally:
        single.stop(signal.SIGKILL)
