"""The store on its own thread, with group commit for messages.

SQLite is synchronous and a durable COMMIT (synchronous=FULL) costs about a
fifth of a millisecond, more than a message's crypto. So every store call
runs on one dedicated thread (the event loop never blocks on disk), and
messages are committed in batches: while one COMMIT runs, new messages
queue; the next batch takes them all in one transaction. A receipt's future
resolves only after the COMMIT that holds its message returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from securecomm.errors import StoreUnavailableError
from securecomm.store.api import ServerStore
from securecomm.timeutil import now_ms
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.store.db import NewDirect, NewMessage, StoredMessage

T = TypeVar("T")
log = logging.getLogger("securecomm.server")
#: Upper bound on one transaction: keeps a commit's latency bounded under load.
MAX_BATCH = 1024
#: DIRECT ids looked at per prune (a few milliseconds of the writer thread). Four
#: batches' worth: while a prune finds this many to delete, the next batch prunes
#: again, so forgetting keeps up with any rate the commit queue can store.
PRUNE_ROWS = 4 * MAX_BATCH
#: Otherwise the ids are pruned at most this often.
PRUNE_SECONDS = 10.0


def not_stored(fut: asyncio.Future[Any]) -> tuple[P.ErrorCode, str]:
    """The ERROR for a SEND or DIRECT whose batch failed: nothing was committed, so no receipt.

    A lost database (PostgreSQL, several relays) is UNAVAILABLE: retryable, the same envelope
    may be sent again shortly or to another relay (PROTOCOL.md 3.6)."""
    if not fut.cancelled() and isinstance(fut.exception(), StoreUnavailableError):
        return P.ErrorCode.UNAVAILABLE, "the relay's database is unreachable: nothing was stored; retry shortly"
    return P.ErrorCode.INTERNAL, "message could not be stored; retry"


class AsyncStore:
    """Runs a ServerStore on one thread of its own and commits messages in batches.

    It takes openers, not a path: which database lies behind (SQLite today) is the caller's."""

    def __init__(self, open_writer: Callable[[], ServerStore], open_reader: Callable[[], ServerStore],
                 id_lifetime_ms: int | None = None) -> None:
        self._open_writer, self._open_reader = open_writer, open_reader
        #: How long a DIRECT id is remembered for replay detection (None: for ever); see _prune.
        self.id_lifetime_ms = id_lifetime_ms
        self._next_prune = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="securecomm-db")
        self._pending: list[tuple[NewMessage | NewDirect, asyncio.Future[StoredMessage]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._store: ServerStore | None = None
        self._closing = False
        self.batches = 0
        #: Read-only connection used directly on the event loop (see Store(readonly=True)).
        self.reader: ServerStore | None = None

    async def open(self) -> None:
        self._store = await self.call(self._open_writer)  # creates and migrates the schema
        self.reader = self._open_reader()
        self._task = asyncio.create_task(self._commit_loop(), name="securecomm-group-commit")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def read(self) -> ServerStore:
        """The read-only connection, for lookups that must not wait behind commits."""
        assert self.reader is not None, "AsyncStore.open() was not awaited"
        return self.reader

    @property
    def store(self) -> ServerStore:
        assert self._store is not None, "AsyncStore.open() was not awaited"
        return self._store

    def submit(self, message: NewMessage | NewDirect) -> asyncio.Future[StoredMessage]:
        fut: asyncio.Future[StoredMessage] = asyncio.get_running_loop().create_future()
        self._pending.append((message, fut))
        self._wakeup.set()
        return fut

    async def _commit_loop(self) -> None:
        while not (self._closing and not self._pending):
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await self.call(self.store.store_messages, [m for m, _ in batch])
                except Exception as e:  # a failed commit fails its batch; no receipt is sent
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self.batches += 1
                for (_, fut), stored in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(stored)
                await self._prune()

    async def _prune(self) -> None:
        """Forget DIRECT ids too old to matter, after a batch (receipts already resolved).

        Run from the commit queue because only stored messages add ids: an idle server has
        nothing to forget. Bounded per call (PRUNE_ROWS); a full prune asks for another soon."""
        if self.id_lifetime_ms is None or time.monotonic() < self._next_prune:
            return
        cutoff = now_ms() - self.id_lifetime_ms
        try:
            deleted = await self.call(self.store.prune_direct_ids, cutoff, PRUNE_ROWS)
        except Exception as e:  # a busy database: try again after the next interval
            log.warning("forgetting old direct message ids failed: %s", str(e)[:200])
            deleted = 0
        self._next_prune = time.monotonic() + (0.0 if deleted >= PRUNE_ROWS else PRUNE_SECONDS)

    async def close(self) -> None:
        """Commit what is queued, then close the database."""
        self._closing = True
        self._wakeup.set()
        if self._task:
            await self._task
        if self.reader is not None:
            self.reader.close()
        if self._store is not None:
            await self.call(self._store.close)
        self._executor.shutdown(wait=True)
