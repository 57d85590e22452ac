"""Files through the server on PostgreSQL (several relays): the same calls as store/files.py's FileStore.

Theory of operation
-------------------
    offer(sender, recipient, size, sha256) ──► a `files` row, quota reserved under one cluster-wide lock
    put(sender, id, offset, data)           ──► one transaction: row locked, offset == received checked,
                                                a `file_chunks` row inserted, `received` advanced
        … at size: SHA-256 of the whole file checked, row complete (the same transaction)
    open_for(recipient, id[, partial])      ──► a reader that fetches one chunk at a time, from any offset
                                                (partial: also while it is uploaded, up to progress(id))
    done(recipient, id, device, listed)     ──► that device crossed off (`file_fetchers`, migration 9); the row
                                                deleted once no fetcher still listed is left (store/files.py)
    expire()                                ──► row deleted; its chunks and fetchers go with it (ON DELETE CASCADE)

Both the rows and the ciphertext live in PostgreSQL, so any relay serves any file: uploaded through
relay A, resumed through relay B after A died, fetched through relay C. SQLite relays keep
store/files.py (a folder and files.db).

Why a table of bytea chunks and not large objects: a chunk row is written in the same transaction as
the `received` count that says it exists, so what a resume is told is exactly what is held, whatever
crashed; rows go with their file by a foreign key (large objects need lo_unlink, and a crash between
the two leaves orphans); `db copy`, backups and permissions treat them like every other table; and a
reader needs one indexed lookup per chunk. Chunks are stored EXTERNAL (not compressed: ciphertext does
not compress). benchmarks/postgres_files.py measures the upload and download rates.

Memory stays constant whatever the file's size: a put holds one chunk, a reader one chunk, and the
digest of a file resumed on another relay is computed by streaming its chunks through a server-side
cursor. `received` in the row is the truth for how much was received (the column plays the part the
.part file's length plays on disk).

Quota: an offer takes a transaction-scoped advisory lock (one for all offers of the deployment), then
counts the recipient's reservations and the sender's unfinished uploads: two relays cannot both admit
offers that together overshoot. Offers are rare and the transaction is one round trip of statements.

Every call runs on the file service's one worker thread (server/files.py) with its own connection; a
lost connection is StoreUnavailableError (retryable), and the next call reconnects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg

from securecomm.errors import StoreUnavailableError
from securecomm.store.files import (
    DEFAULT_DAYS,
    DEFAULT_MAX_FILE,
    DEFAULT_QUOTA,
    DEFAULT_SENDER_QUOTA,
    FILE_ID_SIZE,
    IDLE_AT_CAP,
    MAX_OPEN_UPLOADS,
    UPLOAD_IDLE,
    FileRefused,
    Offer,
    Stored,
    at_cap,
)
from securecomm.store.postgres import _reason, connect, redact

#: Any constant, distinct from postgres.MIGRATION_LOCK: serialises offers across every relay.
OFFER_LOCK = 0x5EC0_F11E
#: The first key of the two-key advisory lock that serialises FILE_PUTs to one recipient (the second:
#: hashtext of the name); an int4, like both keys of that form.
PUT_LOCK_SPACE = 0x5EC0_F11F
#: Chunks a digest pass fetches per round trip (each at most one FILE_PUT's data).
DIGEST_FETCH = 8

_ROW = "SELECT id, sender, recipient, size, sha256, complete, expires FROM files WHERE id = %s"


def _stored(r: Any) -> Stored:
    return Stored(bytes(r[0]), r[1], r[2], int(r[3]), bytes(r[4]), bool(r[5]), float(r[6]))


class PgFileStore:
    """Files waiting for their recipients, rows and ciphertext in the deployment's PostgreSQL."""

    def __init__(self, url: str, *, quota: int = DEFAULT_QUOTA, max_file: int = DEFAULT_MAX_FILE,
                 days: float = DEFAULT_DAYS, clock: Callable[[], float] = time.time,
                 sender_quota: int = DEFAULT_SENDER_QUOTA) -> None:
        self.url, self.quota, self.max_file, self.days, self.clock = url, quota, max_file, days, clock
        self.sender_quota = sender_quota
        self._db: psycopg.Connection[Any] | None = connect(url)
        # A running digest per upload in progress on this relay; one resumed from another relay is
        # digested from its chunks at the end instead.
        self._hashers: dict[bytes, tuple[int, hashlib._Hash]] = {}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    # -- connection --------------------------------------------------------------------
    @property
    def db(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = None
            self._db = connect(self.url)  # StoreUnavailableError while it is down
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                yield cur
        except psycopg.OperationalError as e:
            if self._db is not None and not (self._db.closed or self._db.broken):
                raise
            raise StoreUnavailableError(f"lost the PostgreSQL database at {redact(self.url)}: {_reason(e)}") from None

    # -- queries -----------------------------------------------------------------------
    def row(self, file_id: bytes) -> Stored | None:
        with self._transaction() as cur:
            r = cur.execute(_ROW, (file_id,)).fetchone()
        return _stored(r) if r else None

    def used(self, recipient: str) -> int:
        """Bytes reserved for `recipient`: the declared size of every file waiting for them."""
        with self._transaction() as cur:
            return _used(cur, recipient)

    def received(self, file_id: bytes) -> int:
        with self._transaction() as cur:
            r = cur.execute("SELECT received FROM files WHERE id = %s", (file_id,)).fetchone()
        return int(r[0]) if r else 0

    # -- upload ------------------------------------------------------------------------
    def offer(self, sender: str, recipient: str, size: int, sha256: bytes, file_id: bytes | None = None,
              fetchers: Sequence[bytes] = (), sender_device: bytes | None = None) -> Offer:
        """Reserve room for a new file, or tell how much of the sender's unfinished one is held.
        `fetchers`, `sender_device`: as store/files.py FileStore.offer."""
        if file_id is not None:
            return self._resume(sender, recipient, size, sha256, file_id)
        if size <= 0 or size > self.max_file:
            raise FileRefused("file-too-large", f"a file must be 1 to {self.max_file} bytes of ciphertext")
        self.drop_stalled()
        new_id, now = os.urandom(FILE_ID_SIZE), self.clock()
        expires = now + self.days * 86400
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (OFFER_LOCK,))
            (open_uploads,) = cur.execute("SELECT COUNT(*) FROM files WHERE sender = %s AND NOT complete",
                                          (sender,)).fetchone() or (0,)
            if open_uploads >= MAX_OPEN_UPLOADS:  # make room: this sender's uploads idle for IDLE_AT_CAP
                open_uploads -= cur.execute("DELETE FROM files WHERE sender = %s AND NOT complete AND touched <= %s",
                                            (sender, now - IDLE_AT_CAP)).rowcount
            if open_uploads >= MAX_OPEN_UPLOADS:
                raise FileRefused("file-over-quota", at_cap(open_uploads))
            if _used(cur, recipient) + size > self.quota:
                raise FileRefused("file-over-quota", f"{recipient}'s file storage is full ({self.quota} bytes)")
            sent = cur.execute("SELECT COALESCE(SUM(size), 0) FROM files WHERE sender = %s", (sender,)).fetchone()
            if (int(sent[0]) if sent else 0) + size > self.sender_quota:
                raise FileRefused("file-over-quota", f"files you sent that are not yet fetched fill your "
                                                     f"{self.sender_quota} bytes; wait until they are fetched")
            cur.execute("INSERT INTO files (id, sender, recipient, size, sha256, created, touched, expires, "
                        "sender_device) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (new_id, sender, recipient, size, sha256, now, now, expires, sender_device))
            for device in dict.fromkeys(fetchers):
                cur.execute("INSERT INTO file_fetchers (file_id, device) VALUES (%s, %s)", (new_id, device))
        return Offer(new_id, 0, expires)

    def _resume(self, sender: str, recipient: str, size: int, sha256: bytes, file_id: bytes) -> Offer:
        with self._transaction() as cur:
            r = cur.execute("SELECT sender, recipient, size, sha256, complete, expires, received FROM files "
                            "WHERE id = %s", (file_id,)).fetchone()
        if r is None or r[0] != sender or r[4]:
            raise FileRefused("file-not-found", "no unfinished upload of yours has that id")
        if (r[1], int(r[2]), bytes(r[3])) != (recipient, size, sha256):
            raise FileRefused("file-mismatch", "that upload was offered with another recipient, size or digest")
        return Offer(file_id, int(r[6]), float(r[5]))

    def put(self, sender: str, file_id: bytes, offset: int, data: bytes) -> tuple[int, bool]:
        """Append `data` at `offset`; returns (received, complete). Nothing is written when refused."""
        try:
            return self._put(sender, file_id, offset, data)
        except FileRefused:
            raise
        except BaseException:  # not committed: the running digest may hold bytes the table does not
            self._hashers.pop(file_id, None)
            raise

    def _put(self, sender: str, file_id: bytes, offset: int, data: bytes) -> tuple[int, bool]:
        refused: FileRefused | None = None
        with self._transaction() as cur:
            r = cur.execute("SELECT sender, size, sha256, complete, received, recipient FROM files WHERE id = %s "
                            "FOR UPDATE", (file_id,)).fetchone()
            if r is None or r[0] != sender or r[3]:
                raise FileRefused("file-not-found", "no unfinished upload of yours has that id")
            size, sha256, held = int(r[1]), bytes(r[2]), int(r[4])
            if offset != held:
                raise FileRefused("file-out-of-order", f"chunk at offset {offset}, but {held} bytes are held")
            if held + len(data) > size:
                raise FileRefused("file-size-mismatch", f"more bytes than the {size} offered")
            # the recipient's uploads one at a time across relays, so that racing chunks cannot pass the quota
            # together (offers take OFFER_LOCK first, then this: the same order everywhere)
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PUT_LOCK_SPACE, r[5]))
            if _used(cur, r[5]) + len(data) > self.quota:  # see FileStore.used
                raise FileRefused("file-put-over-quota", f"{r[5]}'s file storage filled up during this upload "
                                  f"({self.quota} bytes); resume once files waiting for them are fetched")
            if held + len(data) < size:
                # Like the .part file of a SQLite relay (fsynced only when complete): a chunk's commit does
                # not wait for the WAL flush. A crash of PostgreSQL may lose the last chunks, but always
                # with the `received` that counts them (one transaction, WAL order): the resume is told
                # what is held. The completing chunk's commit is durable (FILE_ACK complete = 1).
                cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("INSERT INTO file_chunks (file_id, at, data) VALUES (%s, %s, %s)", (file_id, held, data))
            cur.execute("UPDATE files SET received = %s, touched = %s WHERE id = %s",
                        (held + len(data), self.clock(), file_id))
            if sha256:  # offered without a digest (b""): nothing to check at the end
                self._hash(file_id, held, data)
            if held + len(data) < size:
                return held + len(data), False
            if not sha256 or hmac.compare_digest(self._digest(cur, file_id, size), sha256):
                cur.execute("UPDATE files SET complete = true WHERE id = %s", (file_id,))
            else:
                cur.execute("DELETE FROM files WHERE id = %s", (file_id,))
                refused = FileRefused("file-digest-mismatch",
                                      "the file's SHA-256 does not match its offer; it was deleted")
        if refused is not None:  # raised after the commit: the deletion must stay
            raise refused
        return size, True

    def _hash(self, file_id: bytes, held: int, data: bytes) -> None:
        at, hasher = self._hashers.get(file_id, (0, hashlib.sha256()))
        if at == held:  # else this relay did not see the start: _digest reads the chunks back
            hasher.update(data)
            self._hashers[file_id] = (held + len(data), hasher)

    def _digest(self, cur: psycopg.Cursor[Any], file_id: bytes, size: int) -> bytes:
        at, hasher = self._hashers.pop(file_id, (-1, hashlib.sha256()))
        if at == size:
            return hasher.digest()
        hasher = hashlib.sha256()
        with self.db.cursor(name="securecomm_digest") as chunks:  # server-side: one batch held at a time
            chunks.itersize = DIGEST_FETCH
            chunks.execute("SELECT data FROM file_chunks WHERE file_id = %s ORDER BY at", (file_id,))
            for (data,) in chunks:
                hasher.update(data)
        return hasher.digest()

    def cancel(self, sender: str, file_id: bytes) -> None:
        """As store/files.py FileStore.cancel; its chunks and fetchers go with the row (ON DELETE CASCADE)."""
        with self._transaction() as cur:
            gone = cur.execute("DELETE FROM files WHERE id = %s AND sender = %s AND NOT complete",
                               (file_id, sender)).rowcount
        self._hashers.pop(file_id, None)
        if not gone:
            raise FileRefused("file-not-found", "no unfinished upload of yours has that id")

    # -- download ----------------------------------------------------------------------
    def open_for(self, recipient: str, file_id: bytes, partial: bool = False) -> tuple[Stored, ChunkReader]:
        """The recipient's file, open for reading (one chunk fetched per read); with `partial` also while
        it is being uploaded (as store/files.py: read no further than `progress` says is held)."""
        row = self.row(file_id)
        if row is None or row.recipient != recipient or not (row.complete or partial):
            raise FileRefused("file-not-found", "no file for you has that id")
        return row, ChunkReader(self, file_id, row.size)

    def progress(self, file_id: bytes) -> tuple[int, bool] | None:
        """(bytes held, complete) of a file, or None once it is gone. A chunk and the `received` that
        counts it commit together, so every byte counted here can be read."""
        with self._transaction() as cur:
            r = cur.execute("SELECT received, complete, size FROM files WHERE id = %s", (file_id,)).fetchone()
        if r is None:
            return None
        return (int(r[2]), True) if r[1] else (int(r[0]), False)

    def fetchers(self, file_id: bytes) -> set[bytes]:
        with self._transaction() as cur:
            return {bytes(d) for (d,) in cur.execute("SELECT device FROM file_fetchers WHERE file_id = %s",
                                                     (file_id,))}

    def done(self, recipient: str, file_id: bytes, device: bytes | None = None,
             listed: Collection[bytes] | None = None) -> bool:
        """As store/files.py FileStore.done. The file's row is locked first, so that two devices finishing
        at once on two relays cannot each see the other still waiting and both leave the file behind."""
        with self._transaction() as cur:
            r = cur.execute("SELECT 1 FROM files WHERE id = %s AND recipient = %s AND complete FOR UPDATE",
                            (file_id, recipient)).fetchone()
            if r is None:
                raise FileRefused("file-not-found", "no file for you has that id")
            waiting = {bytes(d) for (d,) in cur.execute("SELECT device FROM file_fetchers WHERE file_id = %s",
                                                        (file_id,))}
            if waiting and device is not None:
                cur.execute("DELETE FROM file_fetchers WHERE file_id = %s AND device = %s", (file_id, device))
            left = waiting - {device} if device is not None else waiting
            if listed is not None:
                left &= set(listed)
            gone = not waiting or not left
            if gone:
                cur.execute("DELETE FROM files WHERE id = %s", (file_id,))
        if gone:
            self._hashers.pop(file_id, None)
        return gone

    def waiting_recipients(self) -> list[str]:
        with self._transaction() as cur:
            return [r for (r,) in cur.execute(
                "SELECT DISTINCT f.recipient FROM files f JOIN file_fetchers x ON x.file_id = f.id")]

    def prune_fetchers(self, listed: Mapping[str, Collection[bytes]]) -> int:
        """As store/files.py FileStore.prune_fetchers, one transaction per account."""
        gone = 0
        for recipient, devices in listed.items():
            keep = set(devices)
            with self._transaction() as cur:
                waiting: dict[bytes, set[bytes]] = {}
                for file_id, device in cur.execute(
                        "SELECT x.file_id, x.device FROM file_fetchers x JOIN files f ON f.id = x.file_id "
                        "WHERE f.recipient = %s FOR UPDATE OF f", (recipient,)):
                    waiting.setdefault(bytes(file_id), set()).add(bytes(device))
                for file_id, devs in waiting.items():
                    if not devs & keep:
                        cur.execute("DELETE FROM files WHERE id = %s", (file_id,))
                        gone += 1
                    for d in devs - keep:
                        cur.execute("DELETE FROM file_fetchers WHERE file_id = %s AND device = %s", (file_id, d))
        return gone

    def sending_accounts(self) -> list[str]:
        with self._transaction() as cur:
            return [r for (r,) in cur.execute("SELECT DISTINCT sender FROM files WHERE sender_device IS NOT NULL")]

    def drop_unlisted_senders(self, listed: Mapping[str, Collection[bytes]]) -> int:
        """As store/files.py FileStore.drop_unlisted_senders."""
        gone = 0
        for sender, devices in listed.items():
            keep = list(devices) or [b""]  # no device left: none matches (an empty array has no type)
            with self._transaction() as cur:
                gone += cur.execute("DELETE FROM files WHERE sender = %s AND sender_device IS NOT NULL "
                                    "AND NOT (sender_device = ANY(%s))", (sender, keep)).rowcount
        return gone

    # -- housekeeping ------------------------------------------------------------------
    def expire(self) -> int:
        """Delete every file past its expiry, complete or not; returns how many."""
        with self._transaction() as cur:
            n = cur.execute("DELETE FROM files WHERE expires <= %s", (self.clock(),)).rowcount
        return n + self.drop_stalled()

    def drop_stalled(self) -> int:
        """Delete unfinished uploads that received nothing for UPLOAD_IDLE seconds; returns how many."""
        with self._transaction() as cur:
            return cur.execute("DELETE FROM files WHERE NOT complete AND touched <= %s",
                               (self.clock() - UPLOAD_IDLE,)).rowcount

    def keep_only(self, accounts: set[str]) -> int:
        """Delete files from or for any account not in `accounts` (removed ones); returns how many.
        An account in the users table counts too: one added on another relay after `accounts` was read
        keeps the files offered to it meanwhile."""
        names = sorted(accounts)
        with self._transaction() as cur:
            return cur.execute("DELETE FROM files WHERE NOT ("
                               "(sender = ANY(%s) OR sender IN (SELECT name FROM users)) AND "
                               "(recipient = ANY(%s) OR recipient IN (SELECT name FROM users)))",
                               (names, names)).rowcount

    def remove_user(self, user: str) -> None:
        """Files from or for a removed account go with it."""
        with self._transaction() as cur:
            cur.execute("DELETE FROM files WHERE sender = %s OR recipient = %s", (user, user))


class ChunkReader:
    """A complete file read back from its chunk rows: seek, then read; at most one chunk per read."""

    def __init__(self, store: PgFileStore, file_id: bytes, size: int) -> None:
        self.store, self.file_id, self.size, self.pos = store, file_id, size, 0

    def seek(self, offset: int) -> int:
        self.pos = max(0, offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes from the chunk that holds the position (fewer at a chunk's end); b"" at the end.
        With no `n`, the rest of the file (tests; the server reads chunk by chunk)."""
        if n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self.pos >= self.size:
            return b""
        want = min(n, self.size - self.pos)
        with self.store._transaction() as cur:
            r = cur.execute("SELECT substring(data FROM (%s - at + 1)::int FOR %s::int) FROM file_chunks "
                            "WHERE file_id = %s AND at <= %s ORDER BY at DESC LIMIT 1",
                            (self.pos, want, self.file_id, self.pos)).fetchone()
        data = bytes(r[0]) if r else b""  # gone: deleted meanwhile (done on another connection, expiry)
        self.pos += len(data)
        return data

    def close(self) -> None:
        pass

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _used(cur: psycopg.Cursor[Any], recipient: str) -> int:
    """As FileStore.used: complete files by size, unfinished uploads by what they hold."""
    r = cur.execute("SELECT COALESCE(SUM(CASE WHEN complete THEN size ELSE received END), 0) FROM files "
                    "WHERE recipient = %s", (recipient,)).fetchone()
    return int(r[0]) if r else 0
