"""DIRECT ids are forgotten once a replay would be stale anyway (second attack round, item 3).

Before: direct_ids kept every id for ever; tiny DMs to oneself, acknowledged at once, grew the
database without bound (17,800 rows and 0.9 -> 6.5 MB in 17 s, /tmp/atk2w/directids.py) while the
mailbox quota never bit.
"""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from securecomm.store.db import Store
from tests.serverproc import ServerProc, sc, users_logged_in


def _ids(con: sqlite3.Connection, where: str = "1") -> int:
    return int(con.execute(f"SELECT COUNT(*) FROM direct_ids WHERE {where}").fetchone()[0])


def test_prune_forgets_only_old_ids_and_looks_at_a_bounded_number(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    try:
        rows = [(1, bytes([n]) * 16, b"\x00" * 32, 0) for n in range(5)]  # stored at the epoch
        rows += [(1, bytes([n]) * 16, b"\x00" * 32, 10_000) for n in range(5, 7)]  # recent
        store.db.executemany("INSERT INTO direct_ids VALUES (?, ?, ?, ?)", rows)
        assert store.prune_direct_ids(5_000, limit=3) == 3  # bounded: no more than `limit` per call
        assert store.prune_direct_ids(5_000, limit=3) == 2
        assert store.prune_direct_ids(5_000, limit=3) == 0
        assert _ids(store.db) == 2 and _ids(store.db, "stored_at_ms = 10000") == 2
    finally:
        store.close()


@pytest.fixture
def server(tmp_path):
    srv = ServerProc(tmp_path / "server").start()
    yield srv
    srv.stop(signal.SIGKILL)


def test_the_server_forgets_ids_older_than_twice_the_stale_window(server, tmp_path):
    homes = users_logged_in(server, tmp_path)
    con = sqlite3.connect(server.home / "securecomm.db", isolation_level=None, timeout=10)
    try:
        old_ms = time.time_ns() // 1_000_000 - 2 * 5 * 60 * 1000 - 60_000  # a minute past the 10 minutes
        con.executemany("INSERT INTO direct_ids VALUES (1, ?, ?, ?)",
                        [(n.to_bytes(16, "big"), b"\x00" * 32, old_ms) for n in range(300)])
        kept_ms = time.time_ns() // 1_000_000 - 60_000  # a minute old: a replay could still pass
        con.execute("INSERT INTO direct_ids VALUES (1, ?, ?, ?)", (b"\xff" * 16, b"\x00" * 32, kept_ms))
        r = sc(homes["alice"], "send", "--to", "bob", "a prune follows this commit")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        while _ids(con, f"stored_at_ms <= {old_ms}") and time.monotonic() < deadline:
            time.sleep(0.05)  # the prune runs on the server's writer thread right after the commit
        assert _ids(con, f"stored_at_ms <= {old_ms}") == 0
        assert _ids(con, f"stored_at_ms = {kept_ms}") == 1
        assert _ids(con) == 1  # the recent one; the message just sent is version 2: its id is kept per device
        assert con.execute("SELECT COUNT(*) FROM device_direct_ids").fetchone()[0] == 1
    finally:
        con.close()
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 0 and b"a prune follows this commit" in r.stdout
