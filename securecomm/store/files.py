"""Ciphertext of files in transit through the server (docs/PROTOCOL.md 4.4).

Theory of operation
-------------------
    offer(sender, recipient, size, sha256) ──► a row (quota reserved) + an empty FOLDER/<id>.part
    put(sender, id, offset, data)           ──► append; offset must equal the part's length
        … at size: SHA-256 of the whole part checked (if offered: b"" = none), fsync,
          rename to FOLDER/<id>, row complete
    cancel(sender, id)                      ──► the sender's unfinished upload deleted
    open_for(recipient, id[, partial])      ──► the file, read from any offset (partial: while it is
                                                uploaded, no further than progress(id) says is held)
    done(recipient, id, device, listed)     ──► that device crossed off; row and bytes deleted once
                                                every fetcher still listed has crossed itself off
    expire() / prune_fetchers(listed)       ──► expired files deleted / removed devices crossed off
    drop_unlisted_senders(listed)           ──► files a removed device uploaded deleted

Fetchers (docs/PROTOCOL.md 4.4): an offer to an account with devices (6.3)
records the devices listed then (`file_fetchers`), and the file is kept
until each of them that is still listed has sent file_done, so that every
device can fetch the one copy (the quota counts it once). A file with no
fetcher rows (an account without devices, or a file offered before this
table existed) goes at the first file_done, as it always did.

The server never sees plaintext: what it stores is a streaming envelope
sealed to the recipient. The length of the part file on disk is the truth
for how much was received (so a restart resumes where the disk is, with no
write per chunk to the database); the rows (SQLite, parameters only) hold
who, how large, which digest, and until when. A recipient's quota counts the
declared size of every file waiting for them, complete or not, from the
moment it is offered, so parallel uploads cannot overshoot it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from securecomm.errors import SecurecommError

FILE_ID_SIZE = 16
#: Default limits (serve options --file-quota, --max-file, --file-days).
DEFAULT_QUOTA = 1 << 30
#: Bytes one SENDER may have stored, complete or not, all recipients together (--file-sender-quota):
#: bounds the disk one account can fill with files nobody announced (F3) to this, not accounts x quota.
DEFAULT_SENDER_QUOTA = 2 << 30
#: Free bytes an offer must leave on the files' disk (statvfs), whatever the quotas allow (F3).
DISK_FLOOR = 256 << 20
DEFAULT_MAX_FILE = 4 << 30
DEFAULT_DAYS = 7.0
#: Unfinished uploads one sender may have at once, all recipients together. An offer reserves the
#: recipient's quota before a byte arrives: without a cap, one account made 2,000 offers in 7 s.
MAX_OPEN_UPLOADS = 8
#: Seconds an unfinished upload may go without a new byte before it is deleted and its reservation
#: freed. Without it, one offer of a recipient's whole quota, never uploaded, blocked every file to
#: them for --file-days (7 days). A real upload sends a chunk every few milliseconds, and a dropped
#: one resumes within this time.
UPLOAD_IDLE = 3600.0
#: Once a sender is at MAX_OPEN_UPLOADS, its own uploads idle this long make room for its new offer.
#: A `send` killed mid-upload (SIGKILL, a dead link) cancels nothing, and eight of them blocked that
#: account's every file for UPLOAD_IDLE (the attacker's check). Longer than a client's resume window
#: (fetch/send --timeout, 120 s); a cut-through download of such an upload gave up long before.
IDLE_AT_CAP = 300.0


def at_cap(n: int) -> str:
    """The refusal at the cap: its own words (the client's quota hint is for a full recipient)."""
    return (f"{n} unfinished uploads of yours are in progress (at most {MAX_OPEN_UPLOADS}); one that receives "
            f"nothing for {int(IDLE_AT_CAP // 60)} minutes makes room: finish one, or try again then")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id BLOB PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    sender_device BLOB
);
CREATE INDEX IF NOT EXISTS files_recipient ON files (recipient);
CREATE INDEX IF NOT EXISTS files_expires ON files (expires);
CREATE TABLE IF NOT EXISTS file_fetchers (
    file_id BLOB NOT NULL,
    device BLOB NOT NULL,
    PRIMARY KEY (file_id, device)
);
"""


class FileRefused(SecurecommError):
    """A file request the store refuses; `kind` names the row of docs/PROTOCOL.md 5.5."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Offer:
    file_id: bytes
    received: int
    expires: float


@dataclass(frozen=True)
class Stored:
    file_id: bytes
    sender: str
    recipient: str
    size: int
    sha256: bytes
    complete: bool
    expires: float


class FileStore:
    """Files waiting for their recipients, in FOLDER (0700), rows in FOLDER/files.db."""

    def __init__(self, folder: Path, *, quota: int = DEFAULT_QUOTA, max_file: int = DEFAULT_MAX_FILE,
                 days: float = DEFAULT_DAYS, clock: Callable[[], float] = time.time,
                 sender_quota: int = DEFAULT_SENDER_QUOTA, disk_floor: int = DISK_FLOOR) -> None:
        self.folder, self.quota, self.max_file, self.days, self.clock = folder, quota, max_file, days, clock
        self.sender_quota, self.disk_floor = sender_quota, disk_floor
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        db_path = folder / "files.db"
        # who sent what to whom, how large: 0600 like every file here (new-user check: it was 0644)
        os.close(os.open(db_path, os.O_CREAT | os.O_RDWR, 0o600))
        if db_path.stat().st_mode & 0o077:
            db_path.chmod(0o600)
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.executescript(_SCHEMA)
        if "sender_device" not in {r[1] for r in self.db.execute("PRAGMA table_info(files)")}:
            self.db.execute("ALTER TABLE files ADD COLUMN sender_device BLOB")  # files.db from before it
        # A running digest per upload in progress: saves reading the file again at the end.
        self._hashers: dict[bytes, tuple[int, hashlib._Hash]] = {}

    def close(self) -> None:
        self.db.close()

    # -- paths --------------------------------------------------------------------------
    def _part(self, file_id: bytes) -> Path:
        return self.folder / f"{file_id.hex()}.part"

    def _done(self, file_id: bytes) -> Path:
        return self.folder / file_id.hex()

    # -- queries ------------------------------------------------------------------------
    def row(self, file_id: bytes) -> Stored | None:
        r = self.db.execute("SELECT id, sender, recipient, size, sha256, complete, expires FROM files WHERE id = ?",
                            (file_id,)).fetchone()
        return Stored(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) if r else None

    def used(self, recipient: str) -> int:
        """Bytes of `recipient`'s quota in use: the size of every complete file waiting for them, and what
        each unfinished upload holds so far. Not its declared size (attack check: one offer of the whole
        quota plus a byte an hour blocked every file to its recipient for a week); so the FILE_PUT that
        would pass the quota is refused too (`put`)."""
        r = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM files WHERE recipient = ? AND complete = 1",
                            (recipient,)).fetchone()
        open_ids = self.db.execute("SELECT id FROM files WHERE recipient = ? AND complete = 0", (recipient,))
        return int(r[0]) + sum(self.received(bytes(file_id)) for (file_id,) in open_ids.fetchall())

    def received(self, file_id: bytes) -> int:
        try:
            return self._part(file_id).stat().st_size
        except FileNotFoundError:
            pass
        try:  # completing: renamed, its row not yet marked (another relay's `used` must still count it)
            return self._done(file_id).stat().st_size
        except FileNotFoundError:
            return 0

    # -- upload -------------------------------------------------------------------------
    def offer(self, sender: str, recipient: str, size: int, sha256: bytes, file_id: bytes | None = None,
              fetchers: Sequence[bytes] = (), sender_device: bytes | None = None) -> Offer:
        """Reserve room for a new file, or tell how much of the sender's unfinished one is held.
        `fetchers`: the recipient's listed devices, each of which may fetch it before it is deleted
        (ignored when resuming: an upload keeps the fetchers of its first offer). `sender_device`: the
        listed device that offers it (None: an account without devices); see drop_unlisted_senders."""
        if file_id is not None:
            return self._resume(sender, recipient, size, sha256, file_id)
        if size <= 0 or size > self.max_file:
            raise FileRefused("file-too-large", f"a file must be 1 to {self.max_file} bytes of ciphertext")
        self.drop_stalled()
        self._make_room(sender)
        # One write transaction from the checks to the INSERT: two relays sharing this home (F9) or
        # two threads cannot both pass the checks and then both insert past the cap or the quota.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            open_uploads = self.db.execute("SELECT COUNT(*) FROM files WHERE sender = ? AND complete = 0",
                                           (sender,)).fetchone()[0]
            if open_uploads >= MAX_OPEN_UPLOADS:
                raise FileRefused("file-over-quota", at_cap(open_uploads))
            if self.used(recipient) + size > self.quota:
                raise FileRefused("file-over-quota", f"{recipient}'s file storage is full ({self.quota} bytes)")
            sent = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM files WHERE sender = ?", (sender,)).fetchone()
            if int(sent[0]) + size > self.sender_quota:
                raise FileRefused("file-over-quota", f"files you sent that are not yet fetched fill your "
                                                     f"{self.sender_quota} bytes; wait until they are fetched")
            st = os.statvfs(self.folder)
            if st.f_bavail * st.f_frsize - size < self.disk_floor:
                raise FileRefused("file-over-quota", "the server's disk is nearly full; try again later")
            new_id, now = os.urandom(FILE_ID_SIZE), self.clock()
            expires = now + self.days * 86400
            fd = os.open(self._part(new_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            self.db.execute("INSERT INTO files (id, sender, recipient, size, sha256, created, expires, sender_device) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (new_id, sender, recipient, size, sha256, now, expires, sender_device))
            self.db.executemany("INSERT OR IGNORE INTO file_fetchers (file_id, device) VALUES (?, ?)",
                                [(new_id, d) for d in fetchers])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return Offer(new_id, 0, expires)

    def _resume(self, sender: str, recipient: str, size: int, sha256: bytes, file_id: bytes) -> Offer:
        row = self.row(file_id)
        if row is None or row.sender != sender or row.complete:
            raise FileRefused("file-not-found", "no unfinished upload of yours has that id")
        if (row.recipient, row.size, row.sha256) != (recipient, size, sha256):
            raise FileRefused("file-mismatch", "that upload was offered with another recipient, size or digest")
        return Offer(file_id, self.received(file_id), row.expires)

    def put(self, sender: str, file_id: bytes, offset: int, data: bytes) -> tuple[int, bool]:
        """Append `data` at `offset`; returns (received, complete). Nothing is written when refused."""
        row = self.row(file_id)
        if row is None or row.sender != sender or row.complete:
            raise FileRefused("file-not-found", "no unfinished upload of yours has that id")
        held = self.received(file_id)
        if offset != held:
            raise FileRefused("file-out-of-order", f"chunk at offset {offset}, but {held} bytes are held")
        if held + len(data) > row.size:
            raise FileRefused("file-size-mismatch", f"more bytes than the {row.size} offered")
        # the check and the append under the database's write lock: two relays sharing this home (F9)
        # cannot both pass the quota with racing chunks (no row changes: the commit writes nothing)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.used(row.recipient) + len(data) > self.quota:
                raise FileRefused("file-put-over-quota", f"{row.recipient}'s file storage filled up during this "
                                  f"upload ({self.quota} bytes); resume once files waiting for them are fetched")
            with self._part(file_id).open("ab") as f:
                f.write(data)
        finally:
            self.db.execute("COMMIT")
        if row.sha256:  # offered without a digest (b""): nothing to check at the end
            self._hash(file_id, held, data)
        if held + len(data) < row.size:
            return held + len(data), False
        self._complete(row)
        return row.size, True

    def _hash(self, file_id: bytes, held: int, data: bytes) -> None:
        at, hasher = self._hashers.get(file_id, (0, hashlib.sha256()))
        if at == held:  # else a restart lost it: _complete reads the file again
            hasher.update(data)
            self._hashers[file_id] = (held + len(data), hasher)

    def _complete(self, row: Stored) -> None:
        at, hasher = self._hashers.pop(row.file_id, (-1, hashlib.sha256()))
        part = self._part(row.file_id)
        if row.sha256 and not _same(hasher.digest() if at == row.size else _file_sha256(part), row.sha256):
            self._delete(row.file_id)
            raise FileRefused("file-digest-mismatch", "the file's SHA-256 does not match its offer; it was deleted")
        with part.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, self._done(row.file_id))
        self.db.execute("UPDATE files SET complete = 1 WHERE id = ?", (row.file_id,))

    def cancel(self, sender: str, file_id: bytes) -> None:
        """The sender gives up its unfinished upload (its notice may already be out: cut-through): deleted,
        and a download waiting for it is told the file is gone."""
        row = self.row(file_id)
        if row is None or row.sender != sender or row.complete:
            raise FileRefused("file-not-found", "no unfinished upload of yours has that id")
        self._delete(file_id)

    # -- download -----------------------------------------------------------------------
    def open_for(self, recipient: str, file_id: bytes, partial: bool = False) -> tuple[Stored, BinaryIO]:
        """The recipient's file, open for reading: complete, or with `partial` also while it is being
        uploaded (cut-through, docs/PROTOCOL.md 4.4: read no further than `progress` says is held; the
        open file keeps reading the same bytes when the upload completes and renames it)."""
        row = self.row(file_id)
        if row is None or row.recipient != recipient or not (row.complete or partial):
            raise FileRefused("file-not-found", "no file for you has that id")
        paths = (self._done(file_id),) if row.complete else (self._part(file_id), self._done(file_id))
        for path in paths:  # an upload completing meanwhile renamed the part file
            with contextlib.suppress(FileNotFoundError):
                return row, path.open("rb")
        raise FileRefused("file-not-found", "no file for you has that id")

    def progress(self, file_id: bytes) -> tuple[int, bool] | None:
        """(bytes held, complete) of a file, or None once it is gone (deleted, expired, refused)."""
        row = self.row(file_id)
        if row is None:
            return None
        return (row.size, True) if row.complete else (min(self.received(file_id), row.size), False)

    def fetchers(self, file_id: bytes) -> set[bytes]:
        """The devices the file still waits for (empty: no device list, it goes at the first file_done)."""
        return {bytes(d) for (d,) in self.db.execute("SELECT device FROM file_fetchers WHERE file_id = ?",
                                                     (file_id,))}

    def done(self, recipient: str, file_id: bytes, device: bytes | None = None,
             listed: Collection[bytes] | None = None) -> bool:
        """`device` (None: a session that is no listed device) fetched the file: cross it off; delete
        the file once no fetcher that is still `listed` (None: do not filter) is left, or at once if it
        had none. Returns whether the file was deleted."""
        self.db.execute("BEGIN IMMEDIATE")  # two relays on one home: one crossing-off at a time
        try:
            row = self.row(file_id)
            if row is None or row.recipient != recipient or not row.complete:
                raise FileRefused("file-not-found", "no file for you has that id")
            waiting = self.fetchers(file_id)
            if waiting and device is not None:
                self.db.execute("DELETE FROM file_fetchers WHERE file_id = ? AND device = ?", (file_id, device))
            left = waiting - {device} if device is not None else waiting
            if listed is not None:
                left &= set(listed)
            gone = not waiting or not left
            if gone:
                self._delete(file_id)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return gone

    def waiting_recipients(self) -> list[str]:
        """Accounts with files that wait for some device (prune_fetchers needs their device lists)."""
        return [r for (r,) in self.db.execute(
            "SELECT DISTINCT f.recipient FROM files f JOIN file_fetchers x ON x.file_id = f.id")]

    def prune_fetchers(self, listed: Mapping[str, Collection[bytes]]) -> int:
        """Cross off every fetcher of `recipient`'s files no longer in listed[recipient] (a removed device),
        and delete the files left waiting for nobody; returns how many files were deleted."""
        gone = 0
        for recipient, devices in listed.items():
            keep = set(devices)
            for (file_id,) in self.db.execute("SELECT id FROM files WHERE recipient = ?", (recipient,)).fetchall():
                waiting = self.fetchers(file_id)
                if not waiting or waiting <= keep:
                    continue
                for d in waiting - keep:
                    self.db.execute("DELETE FROM file_fetchers WHERE file_id = ? AND device = ?", (file_id, d))
                if not waiting & keep:
                    self._delete(file_id)
                    gone += 1
        return gone

    def sending_accounts(self) -> list[str]:
        """Accounts with files a device of theirs uploaded (drop_unlisted_senders needs their lists)."""
        return [r for (r,) in self.db.execute("SELECT DISTINCT sender FROM files WHERE sender_device IS NOT NULL")]

    def drop_unlisted_senders(self, listed: Mapping[str, Collection[bytes]]) -> int:
        """Delete every file of `sender` uploaded by a device no longer in listed[sender], fetched or not:
        a removed device's waiting mail goes with it (docs/PROTOCOL.md 6.7), and so does its notice of
        the file, so nobody could fetch it while it filled the recipient's quota for --file-days (the
        attacker's check). Returns how many were deleted."""
        gone = []
        for sender, devices in listed.items():
            keep = set(devices)
            gone += [bytes(file_id) for file_id, device in self.db.execute(
                "SELECT id, sender_device FROM files WHERE sender = ? AND sender_device IS NOT NULL", (sender,))
                     if bytes(device) not in keep]
        for file_id in gone:
            self._delete(file_id)
        return len(gone)

    # -- housekeeping -------------------------------------------------------------------
    def expire(self) -> int:
        """Delete every file past its expiry, complete or not; returns how many."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM files WHERE expires <= ?", (self.clock(),))]
        for file_id in ids:
            self._delete(file_id)
        return len(ids) + self.drop_stalled()

    def _make_room(self, sender: str) -> None:
        """At MAX_OPEN_UPLOADS: delete `sender`'s unfinished uploads idle for IDLE_AT_CAP (see there)."""
        rows = self.db.execute("SELECT id, created FROM files WHERE sender = ? AND complete = 0",
                               (sender,)).fetchall()
        if len(rows) < MAX_OPEN_UPLOADS:
            return
        now = self.clock()
        for file_id, created in rows:
            if now - self._last_byte(file_id, created) >= IDLE_AT_CAP:
                self._delete(file_id)

    def _last_byte(self, file_id: bytes, created: float) -> float:
        """When an unfinished upload last received a byte: its part file's mtime, or its offer."""
        try:
            return max(created, self._part(file_id).stat().st_mtime)
        except FileNotFoundError:
            return created

    def drop_stalled(self) -> int:
        """Delete unfinished uploads that received nothing for UPLOAD_IDLE seconds; returns how many."""
        now, gone = self.clock(), []
        for file_id, created in self.db.execute("SELECT id, created FROM files WHERE complete = 0").fetchall():
            if now - self._last_byte(file_id, created) >= UPLOAD_IDLE:
                gone.append(file_id)
        for file_id in gone:
            self._delete(file_id)
        return len(gone)

    def keep_only(self, accounts: set[str]) -> int:
        """Delete files from or for any account not in `accounts` (removed ones); returns how many."""
        rows = self.db.execute("SELECT id, sender, recipient FROM files").fetchall()
        gone = [file_id for file_id, sender, recipient in rows if sender not in accounts or recipient not in accounts]
        for file_id in gone:
            self._delete(file_id)
        return len(gone)

    def remove_user(self, user: str) -> None:
        """Files from or for a removed account go with it."""
        for (file_id,) in self.db.execute("SELECT id FROM files WHERE sender = ? OR recipient = ?",
                                          (user, user)).fetchall():
            self._delete(file_id)

    def _delete(self, file_id: bytes) -> None:
        self._hashers.pop(file_id, None)
        for path in (self._part(file_id), self._done(file_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.db.execute("DELETE FROM file_fetchers WHERE file_id = ?", (file_id,))


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()


def _same(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)
