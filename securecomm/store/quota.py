"""Per-recipient mailbox limits (issue 10).

Direct messages wait in `mailbox` until their recipient acknowledges them,
so without a bound one sender could make the server store without end. Each
recipient may have at most `messages` rows and `bytes` of envelopes waiting;
a message that would go over is refused (MAILBOX_FULL) and nothing is stored
for it, while everything already stored stays.

Counting: a recipient's usage is read from SQL once (COUNT and SUM of
LENGTH, which SQLite answers from the record headers) and then kept in step
by the single writer thread on every insert and delete, so the check costs
no query per message. Before refusing, a count older than RECOUNT_AFTER is
read again: another process (`securecomm user remove`) may have deleted rows,
and a recount at most once a minute per recipient keeps refusals cheap.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

#: Direct messages that may wait for one recipient. Generous for a person who is
#: offline for weeks; a flood from one sender stops here.
MAILBOX_MESSAGES = 10_000
#: Bytes of envelopes that may wait for one recipient: 64 maximum-size messages.
#: Large files belong in `securecomm encrypt`, not in a mailbox.
MAILBOX_BYTES = 64 * 1024 * 1024
#: Seconds a count is trusted before a refusal reads it again from the database.
RECOUNT_AFTER = 60.0


@dataclass(frozen=True)
class MailboxLimits:
    messages: int = MAILBOX_MESSAGES
    bytes: int = MAILBOX_BYTES


@dataclass
class _Usage:
    messages: int
    bytes: int
    counted_at: float


class MailboxUsage:
    """What waits for each recipient; used only from the store's writer thread."""

    def __init__(self, limits: MailboxLimits) -> None:
        self.limits = limits
        self._usage: dict[int, _Usage] = {}

    def refusal(self, cur: sqlite3.Cursor, recipient_id: int, size: int) -> str | None:
        """Why a message of `size` bytes cannot be stored for the recipient, or None if it fits."""
        usage = self._usage.get(recipient_id) or self._count(cur, recipient_id)
        if not self._fits(usage, size) and time.monotonic() - usage.counted_at > RECOUNT_AFTER:
            usage = self._count(cur, recipient_id)
        if usage.messages + 1 > self.limits.messages:
            return f"mailbox is full ({usage.messages} messages waiting; the limit is {self.limits.messages})"
        if usage.bytes + size > self.limits.bytes:
            return (f"mailbox is full ({usage.bytes} bytes waiting and this message is {size}; "
                    f"the limit is {self.limits.bytes} bytes)")
        return None

    def _fits(self, usage: _Usage, size: int) -> bool:
        return usage.messages + 1 <= self.limits.messages and usage.bytes + size <= self.limits.bytes

    def _count(self, cur: sqlite3.Cursor, recipient_id: int) -> _Usage:
        n, total = cur.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM mailbox "
                               "WHERE recipient_id = ?", (recipient_id,)).fetchone()
        usage = self._usage[recipient_id] = _Usage(int(n), int(total), time.monotonic())
        return usage

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
