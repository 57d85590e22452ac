"""Mailbox retention (`serve --mailbox-ttl`): direct messages nobody fetched are dropped after a time.

Rows are looked at oldest first by rowid, which is storage order (mailbox ids
only grow), and no more than `limit` per call, so the work of one call is
bounded whatever the mailbox holds; the caller calls again while a call finds
a full batch. The rows' sender and message id come back so that the server can
tell a sender who is connected that the message expired (PROTOCOL.md 5.5).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

#: Mailbox rows looked at per call (a few milliseconds of the writer thread).
EXPIRE_ROWS = 1024


@dataclass(frozen=True)
class Expired:
    sender_id: int
    recipient_id: int
    msg_id: bytes


def expire_mail(db: sqlite3.Connection, stored_before_ms: int, limit: int = EXPIRE_ROWS) -> list[Expired]:
    """Delete direct messages stored before `stored_before_ms` among the `limit` oldest; return them."""
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        rows = cur.execute(
            "DELETE FROM mailbox WHERE id IN (SELECT id FROM mailbox ORDER BY id LIMIT ?) AND stored_at_ms < ? "
            "RETURNING sender_id, recipient_id, msg_id", (limit, stored_before_ms)).fetchall()
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return [Expired(int(s), int(r), bytes(m)) for s, r, m in rows]
