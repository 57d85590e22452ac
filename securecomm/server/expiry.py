"""The mailbox TTL task: drop direct messages that waited longer than `--mailbox-ttl`.

Runs beside the commit queue on the store's writer thread (store/retention.py
does the SQL, bounded per pass); the server is told what was dropped, so that
it can send EXPIRED to each sender who is connected (PROTOCOL.md 4.2), count
it in the metrics and log how many (never who or what).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from securecomm.server.commit_queue import AsyncStore
from securecomm.store.retention import EXPIRE_ROWS, Expired

log = logging.getLogger("securecomm.server")
#: A pass at least this often (seconds): an expired message lingers at most about this long.
MAX_INTERVAL = 60.0


class MailboxExpiry:
    def __init__(self, store: AsyncStore, ttl_seconds: float, on_expired: Callable[[list[Expired]], None]) -> None:
        self.store, self.ttl_ms = store, int(ttl_seconds * 1000)
        self.on_expired = on_expired
        #: A quarter of a short TTL (tests use seconds), else once a minute.
        self.interval = max(0.05, min(MAX_INTERVAL, ttl_seconds / 4))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception as e:  # a busy database: try again next interval
                log.warning("mailbox expiry failed: %s", str(e)[:200])

    async def sweep(self) -> int:
        """Expire everything due now, one bounded pass at a time; returns how many went."""
        cutoff = time.time_ns() // 1_000_000 - self.ttl_ms
        total = 0
        while True:
            batch = await self.store.call(self.store.store.expire_mail, cutoff, EXPIRE_ROWS)
            if batch:
                total += len(batch)
                self.on_expired(batch)
            if len(batch) < EXPIRE_ROWS:
                break
        if total:
            log.info("expired %d direct messages that waited longer than --mailbox-ttl", total,
                     extra={"count": total})
        return total
