"""Per-recipient mailbox limits (issue 10).

Direct messages wait in `mailbox` until their recipient acknowledges them,
so without a bound one sender could make the server store without end. Each
recipient may have at most `messages` rows and `bytes` of envelopes waiting;
a message that would go over is refused (MAILBOX_FULL) and nothing is stored
for it, while everything already stored stays.

Messages to the server (SEND, table `messages`) are kept for good, so each
sender may have at most `send_messages` rows and `send_bytes` of envelopes
stored there; beyond that SEND is refused (STORAGE_FULL) the same way.

Counting: a recipient's usage is read from SQL once (COUNT and SUM of
LENGTH, which SQLite answers from the record headers) and then kept in step
by the single writer thread on every insert and delete, so the check costs
no query per message. Before refusing, the count is read again if it is
older than RECOUNT_AFTER or if the account change counter moved since: another
process (`securecomm user remove`) may have deleted rows (a removed user's
undelivered mail), and that must free the space at once, not a minute later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

#: Direct messages that may wait for one recipient. Generous for a person who is
#: offline for weeks; a flood from one sender stops here.
MAILBOX_MESSAGES = 10_000
#: Bytes of envelopes that may wait for one recipient: 64 maximum-size messages.
#: Large files belong in `securecomm encrypt`, not in a mailbox.
MAILBOX_BYTES = 64 * 1024 * 1024
#: Seconds a count is trusted before a refusal reads it again from the database.
RECOUNT_AFTER = 60.0
#: Messages to the server one user may have stored (they are never deleted): a
#: hundred a day for almost three years.
SEND_MESSAGES = 100_000
#: Bytes of envelopes to the server one user may have stored: 256 maximum-size
#: messages. One connection wrote 150 MB in 3 s before this limit existed.
SEND_BYTES = 256 * 1024 * 1024


class Cursor(Protocol):
    """What the counting needs of a DB-API cursor: sqlite3's and psycopg's both fit (store/postgres.py)."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


@dataclass(frozen=True)
class MailboxLimits:
    messages: int = MAILBOX_MESSAGES
    bytes: int = MAILBOX_BYTES


@dataclass(frozen=True)
class SendLimits:
    messages: int = SEND_MESSAGES
    bytes: int = SEND_BYTES


@dataclass
class _Usage:
    messages: int
    bytes: int
    counted_at: float
    #: The account change counter when counted: a removal elsewhere may have deleted rows.
    accounts: int
    #: Read under a lock from counts kept in the same transactions as the rows (PostgreSQL): never stale.
    exact: bool = False


class MailboxUsage:
    """What waits for each recipient; used only from the store's writer thread."""

    #: Rows of one owner (here: the recipient) and their envelope bytes.
    COUNT_SQL = "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM mailbox WHERE recipient_id = ?"
    FULL, STATE = "mailbox is full", "waiting"

    def __init__(self, limits: MailboxLimits | SendLimits) -> None:
        self.limits = limits
        self._usage: dict[int, _Usage] = {}

    def refusal(self, cur: Cursor, owner_id: int, size: int) -> str | None:
        """Why a message of `size` bytes cannot be stored for the owner, or None if it fits."""
        usage = self._usage.get(owner_id) or self._count(cur, owner_id)
        if not self._fits(usage, size) and self._stale(cur, usage):
            usage = self._count(cur, owner_id)
        if usage.messages + 1 > self.limits.messages:
            return f"{self.FULL} ({usage.messages} messages {self.STATE}; the limit is {self.limits.messages})"
        if usage.bytes + size > self.limits.bytes:
            return (f"{self.FULL} ({usage.bytes} bytes {self.STATE} and this message is {size}; "
                    f"the limit is {self.limits.bytes} bytes)")
        return None

    def _fits(self, usage: _Usage, size: int) -> bool:
        return usage.messages + 1 <= self.limits.messages and usage.bytes + size <= self.limits.bytes

    @staticmethod
    def _stale(cur: Cursor, usage: _Usage) -> bool:
        if usage.exact:
            return False
        return time.monotonic() - usage.counted_at > RECOUNT_AFTER or _accounts(cur) != usage.accounts

    def _count(self, cur: Cursor, owner_id: int) -> _Usage:
        n, total = cur.execute(self.COUNT_SQL, (owner_id,)).fetchone()
        usage = self._usage[owner_id] = _Usage(int(n), int(total), time.monotonic(), _accounts(cur))
        return usage

    def seed(self, owner_id: int, messages: int, size: int) -> None:
        """Counts read elsewhere (PostgreSQL's quota_usage, the same for every relay) replace this one's."""
        self._usage[owner_id] = _Usage(messages, size, time.monotonic(), 0, exact=True)

    def added(self, recipient_id: int, size: int) -> None:
        usage = self._usage.get(recipient_id)
        if usage is not None:
            usage.messages += 1
            usage.bytes += size

    def removed(self, recipient_id: int, size: int) -> None:
        usage = self._usage.get(recipient_id)
        if usage is not None:
            usage.messages -= 1
            usage.bytes -= size

    def forget(self, recipient_id: int | None = None) -> None:
        """Drop counts (all of them after a rolled-back transaction): they are read again when needed."""
        if recipient_id is None:
            self._usage.clear()
        else:
            self._usage.pop(recipient_id, None)


class SendUsage(MailboxUsage):
    """What each sender has stored in `messages` (SEND); used only from the store's writer thread."""

    COUNT_SQL = "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM messages WHERE sender_id = ?"
    FULL, STATE = "your storage for messages to the server is full", "stored"


def _accounts(cur: Cursor) -> int:
    """The account change counter (store/db.py), one indexed row."""
    row = cur.execute("SELECT value FROM counters WHERE name = 'accounts'").fetchone()
    return int(row[0]) if row else 0
