"""Mailbox expiry on a real SQLite store, without a server (the server's use: tests/test_retention.py)."""

from __future__ import annotations

from securecomm.store.db import NewDirect, Store
from securecomm.store.retention import expire_mail


def direct(sender: int, recipient: int, n: int) -> NewDirect:
    return NewDirect(sender_id=sender, recipient_id=recipient, msg_id=bytes([n]) * 16, sha256=bytes(32),
                     envelope=b"sealed")


def test_only_rows_older_than_the_cutoff_go_and_at_most_limit_per_call(tmp_path):
    store = Store(tmp_path / "s.db")
    a = store.add_user("alice", "x").id
    b = store.add_user("bob", "x").id
    store.store_messages([direct(a, b, n) for n in range(5)])
    store.db.execute("UPDATE mailbox SET stored_at_ms = 1000 WHERE msg_id IN (?, ?, ?)",
                     (bytes([0]) * 16, bytes([1]) * 16, bytes([2]) * 16))
    first = expire_mail(store.db, 2000, limit=2)
    assert [(e.sender_id, e.recipient_id, e.msg_id[0]) for e in first] == [(a, b, 0), (a, b, 1)]
    second = expire_mail(store.db, 2000, limit=2)
    assert [e.msg_id[0] for e in second] == [2]
    assert expire_mail(store.db, 2000) == []
    assert store.count_mail() == 2
    store.close()
