"""The SQLite store: versioned schema, users, identities, messages.

Durability: WAL journal with synchronous=FULL, so a COMMIT that returned is
on disk and survives kill -9 or power loss of the server process; receipts
are only sent after the commit that holds their message. Many messages share
one commit (group commit, see server/listener.py), which is what keeps this fast.

All SQL uses parameters; names are validated before they get here.
This class is synchronous and used from one thread only.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from securecomm import timeutil
from securecomm.errors import ExistsError, NotFoundError, UsageError
from securecomm.files import ensure_dir
from securecomm.store.quota import MailboxLimits, MailboxUsage, SendLimits, SendUsage
from securecomm.store.retention import Expired, expire_mail
from securecomm.store.schema_devices import MIGRATION as DEVICES_MIGRATION
from securecomm.store.schema_devices import MIGRATION_8 as DEVICE_MAILBOX_MIGRATION

NAME_RE = re.compile(r"^[a-z0-9_.-]{1,32}$")
ROLES = ("user", "admin")
LOCK_AFTER_FAILURES = 5
LOCK_SECONDS = 15 * 60
#: last_login is kept to the minute: a durable write on every login would cost a
#: disk flush each time (see Server._logged_in).
LAST_LOGIN_RESOLUTION = 60

MIGRATIONS: list[str] = [
    # 1: users and messages to the server
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_login INTEGER,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until INTEGER NOT NULL DEFAULT 0,
        identity BLOB,
        fingerprint BLOB
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        sender_id INTEGER NOT NULL,
        msg_id BLOB NOT NULL,
        sha256 BLOB NOT NULL,
        sent_at_ms INTEGER NOT NULL,
        stored_at_ms INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        UNIQUE (sender_id, msg_id)
    );
    """,
    # 2: store-and-forward mailbox for end-to-end direct messages. Rows are
    # deleted once the recipient acknowledges; direct_ids remembers every id
    # so that a retry after delivery is answered, not delivered twice.
    """
    CREATE TABLE mailbox (
        id INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL,
        sender_id INTEGER NOT NULL,
        msg_id BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL,
        envelope BLOB NOT NULL
    );
    CREATE INDEX mailbox_by_recipient ON mailbox (recipient_id, id);
    CREATE TABLE direct_ids (
        sender_id INTEGER NOT NULL,
        msg_id BLOB NOT NULL,
        sha256 BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL,
        PRIMARY KEY (sender_id, msg_id)
    );
    """,
    # 3: mailbox.id is the DELIVER `seq`, so it must never be reused. A plain
    # INTEGER PRIMARY KEY hands out max(id)+1, so deleting the newest row (an
    # ACK) gave its id to the next message, and a session that had already
    # offered that seq skipped the new message. AUTOINCREMENT never reuses an
    # id. The counter starts above every id ever given out: each mailbox row
    # was inserted with exactly one direct_ids row, so their count bounds them.
    """
    ALTER TABLE mailbox RENAME TO mailbox_v2;
    CREATE TABLE mailbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient_id INTEGER NOT NULL,
        sender_id INTEGER NOT NULL,
        msg_id BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL,
        envelope BLOB NOT NULL
    );
    INSERT INTO mailbox (id, recipient_id, sender_id, msg_id, stored_at_ms, envelope)
        SELECT id, recipient_id, sender_id, msg_id, stored_at_ms, envelope FROM mailbox_v2;
    DROP TABLE mailbox_v2;
    CREATE INDEX mailbox_by_recipient ON mailbox (recipient_id, id);
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'mailbox', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'mailbox');
    UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COUNT(*) FROM direct_ids)) WHERE name = 'mailbox';
    """,
    # 4: accounts. (a) User ids are never reused (AUTOINCREMENT): a removed
    # user's id must not pass to the next account, whose mail would otherwise
    # reach whatever still holds the old id. The sequence starts above every id
    # that messages still name. (b) A device key belongs to one account only;
    # keys shared today are dropped (their owners log in again with a proof).
    # (c) A change counter that every account change bumps, polled by the
    # server to drop the sessions of removed accounts and replaced keys.
    """
    CREATE TABLE users_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_login INTEGER,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until INTEGER NOT NULL DEFAULT 0,
        identity BLOB,
        fingerprint BLOB
    );
    INSERT INTO users_v3 SELECT id, name, role, password_hash, created_at, last_login, failed_logins, locked_until,
        identity, fingerprint FROM users;
    DROP TABLE users;
    ALTER TABLE users_v3 RENAME TO users;
    INSERT INTO sqlite_sequence (name, seq) SELECT 'users', 0
        WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'users');
    UPDATE sqlite_sequence SET seq = MAX(seq,
        (SELECT COALESCE(MAX(sender_id), 0) FROM messages), (SELECT COALESCE(MAX(sender_id), 0) FROM direct_ids),
        (SELECT COALESCE(MAX(recipient_id), 0) FROM mailbox)) WHERE name = 'users';
    UPDATE users SET identity = NULL, fingerprint = NULL WHERE fingerprint IN
        (SELECT fingerprint FROM users WHERE fingerprint IS NOT NULL GROUP BY fingerprint HAVING COUNT(*) > 1);
    CREATE UNIQUE INDEX users_by_fingerprint ON users (fingerprint);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters (name, value) VALUES ('accounts', 0);
    """,
    # 5: a removed user's undelivered mail is deleted with the account (Store.remove_user). Before,
    # it stayed: never offered (a DELIVER names its sender, who is gone) and never acknowledged, yet
    # counted against the recipient's mailbox limit for good. Drop what earlier removals left.
    """
    DELETE FROM mailbox WHERE sender_id NOT IN (SELECT id FROM users);
    """,
    # 6: user keys, devices, prekeys and pairings (docs/PROTOCOL.md 6; store/devices.py)
    DEVICES_MIGRATION,
    # 7: files through the server in PostgreSQL (store/postgres.py migration 7). A SQLite relay keeps
    # them in its files folder with their own files.db (store/files.py): nothing changes here; the
    # number keeps both schemas counting alike.
    "",
    # 8: one mailbox per device; ids per (sender device, recipient device); removed devices (6.7)
    DEVICE_MAILBOX_MIGRATION,
    # 9: the devices a file waits for, in PostgreSQL (store/postgres.py migration 9). A SQLite relay keeps
    # them in its files folder's files.db (store/files.py `file_fetchers`, created there when missing):
    # nothing changes here; the number keeps both schemas counting alike.
    "",
    # 10: the device that uploaded a file, in PostgreSQL (store/postgres.py migration 10); files.db gets
    # its column when it opens (store/files.py). Nothing here; the number keeps both counting alike.
    "",
]


def normalise_name(name: str) -> str:
    """Lower-case and validate a user name: 1-32 of [a-z0-9_.-]."""
    # ASCII only, folded A-Z -> a-z: str.lower() alone would fold e.g. KELVIN SIGN to "k",
    # and re.match's "$" would accept a trailing newline (docs/PROTOCOL.md 5.1)
    lowered = name.lower() if name.isascii() else ""
    if not NAME_RE.fullmatch(lowered):
        raise UsageError(f"user name {name!r} must be 1-32 characters of a-z 0-9 _ . -")
    return lowered


#: `user passwd` without --keep-key: the account's devices go with its key (one parameter: the user id).
FORGET_DEVICES = (
    "DELETE FROM mailbox WHERE recipient_id = ? AND recipient_device IS NOT NULL",
    "DELETE FROM prekeys WHERE device_id IN (SELECT device_id FROM devices WHERE user_id = ?)",
    "DELETE FROM devices WHERE user_id = ?",
    "DELETE FROM user_keys WHERE user_id = ?",
    "DELETE FROM pairings WHERE user_id = ?",
)

#: Why a direct message is refused when its sender or recipient was removed after the server checked it.
ACCOUNT_GONE = "mailbox is closed: the sender's or the recipient's account was removed"
_BOTH_EXIST = "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?) AND EXISTS (SELECT 1 FROM users WHERE id = ?)"


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    password_hash: str
    created_at: int
    last_login: int | None
    failed_logins: int
    locked_until: int
    identity: bytes | None
    fingerprint: bytes | None

    def locked(self, now: float | None = None) -> bool:
        return self.locked_until > (time.time() if now is None else now)


@dataclass(frozen=True)
class StoredMessage:
    msg_id: bytes
    sha256: bytes
    stored_at_ms: int
    duplicate: bool
    seq: int | None = None  # mailbox row, for direct messages
    refused: str | None = None  # why a direct message was not stored (its mailbox is full)
    #: The recipient's highest waiting seq before this one, read under the recipient's mailbox lock
    #: (PostgreSQL; None where not known): a relay that has offered that far may push this message
    #: from the wake-up without reading the store (server/relay.py _wake).
    prev_seq: int | None = None


@dataclass(frozen=True)
class NewMessage:
    """A message to the server (stored in `messages`)."""

    sender_id: int
    msg_id: bytes
    sha256: bytes
    sent_at_ms: int
    envelope: bytes


@dataclass(frozen=True)
class NewDirect:
    """An end-to-end message for another user (stored in `mailbox` until acknowledged).

    `sha256` is the digest of the envelope: the server cannot see the body."""

    sender_id: int
    recipient_id: int
    msg_id: bytes
    sha256: bytes
    envelope: bytes
    #: A version-2 message (docs/PROTOCOL.md 6.7): sealed by this device to that one; stored for that
    #: device only, its id remembered per (sender device, recipient device). None: version 1, per account.
    sender_device: bytes | None = None
    recipient_device: bytes | None = None


@dataclass(frozen=True)
class Taken:
    """An acknowledged mailbox row, deleted: what the DELIVERED receipt to its sender names."""

    msg_id: bytes
    sender_id: int
    device: bytes | None  # the receiving device of a version-2 message; None for version 1


@dataclass(frozen=True)
class MailItem:
    seq: int
    sender: str
    stored_at_ms: int
    envelope: bytes


class Store:
    def __init__(self, path: Path, *, readonly: bool = False, mailbox_limits: MailboxLimits | None = None,
                 send_limits: SendLimits | None = None) -> None:
        self.path = path
        self.mailbox_usage = MailboxUsage(mailbox_limits or MailboxLimits())
        self.send_usage = SendUsage(send_limits or SendLimits())
        if readonly:
            # A second connection for lookups on the event loop's own thread: in WAL
            # mode readers never wait for the writer, and a cached page read costs
            # less than a hop to the writer thread and back.
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=5000")
            return
        ensure_dir(path.parent)
        existed = path.exists()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if not existed:
            path.chmod(0o600)  # whoever can write this file is the operator
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, script.split(";")):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {int(number)}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def device_sql(self) -> sqlite3.Connection:
        """The connection store/devices.py runs on (its SQL is SQLite's as written)."""
        return self.db

    def close(self) -> None:
        self.db.close()

    # -- users ---------------------------------------------------------------------
    # Whole literal queries (no string building anywhere near SQL).
    _USER_BY_NAME = ("SELECT id, name, role, password_hash, created_at, last_login, failed_logins, locked_until, "
                     "identity, fingerprint FROM users WHERE name = ?")
    _USER_BY_ID = ("SELECT id, name, role, password_hash, created_at, last_login, failed_logins, locked_until, "
                   "identity, fingerprint FROM users WHERE id = ?")
    _USER_BY_FINGERPRINT = ("SELECT id, name, role, password_hash, created_at, last_login, failed_logins, "
                            "locked_until, identity, fingerprint FROM users WHERE fingerprint = ?")
    _ALL_USERS = ("SELECT id, name, role, password_hash, created_at, last_login, failed_logins, locked_until, "
                  "identity, fingerprint FROM users ORDER BY name")

    def add_user(self, name: str, password_hash: str, role: str = "user") -> User:
        name = normalise_name(name)
        if role not in ROLES:
            raise UsageError(f"role must be one of {', '.join(ROLES)}")
        try:
            self.db.execute("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                            (name, role, password_hash, int(time.time())))
        except sqlite3.IntegrityError as e:
            raise ExistsError(f"user {name!r} already exists") from e
        user = self.get_user(name)
        assert user is not None
        return user

    def get_user(self, name: str) -> User | None:
        try:
            name = normalise_name(name)
        except UsageError:
            return None
        row = self.db.execute(self._USER_BY_NAME, (name,)).fetchone()
        return User(*row) if row else None

    def get_user_by_id(self, user_id: int) -> User | None:
        row = self.db.execute(self._USER_BY_ID, (user_id,)).fetchone()
        return User(*row) if row else None

    def require_user(self, name: str) -> User:
        user = self.get_user(name)
        if user is None:
            raise NotFoundError(f"no user named {name!r}")
        return user

    def list_users(self) -> list[User]:
        return [User(*r) for r in self.db.execute(self._ALL_USERS)]

    def get_user_by_fingerprint(self, fingerprint: bytes) -> User | None:
        row = self.db.execute(self._USER_BY_FINGERPRINT, (fingerprint,)).fetchone()
        return User(*row) if row else None

    def _account_changed(self) -> None:
        """Bump the counter the server polls (see Server.watch_accounts)."""
        self.db.execute("UPDATE counters SET value = value + 1 WHERE name = 'accounts'")

    def account_changes(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = 'accounts'").fetchone()
        return int(row[0]) if row else 0

    def remove_user(self, name: str) -> None:
        """Delete the account, the mail waiting for it and the mail it sent that was not delivered yet.

        Undelivered mail from a removed sender could never be delivered (a DELIVER names its sender,
        and clients check the sender's key in the directory) yet would count against its recipients'
        mailboxes; a running server recounts those when it sees the account counter move. Messages
        to the server (`messages`) stay: they are the server's record, and count for no one."""
        user = self.require_user(name)
        with self._transaction():
            self.db.execute("DELETE FROM mailbox WHERE recipient_id = ? OR sender_id = ?", (user.id, user.id))
            self.db.execute("DELETE FROM users WHERE id = ?", (user.id,))
            self._account_changed()
        self.mailbox_usage.forget()  # every recipient of its mail may have lost rows
        self.send_usage.forget(user.id)

    def set_password(self, name: str, password_hash: str, *, keep_key: bool = True) -> None:
        """Set a new hash and clear a lockout; with keep_key=False also forget the device key, and every
        device of the account with its user key, list, prekeys and per-device mail (docs/PROTOCOL.md 6):
        the next login starts the account's devices again under a new user key."""
        user = self.require_user(name)
        with self._transaction():
            if keep_key:
                self.db.execute("UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = 0 "
                                "WHERE id = ?", (password_hash, user.id))
            else:
                self.db.execute("UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = 0, "
                                "identity = NULL, fingerprint = NULL WHERE id = ?", (password_hash, user.id))
                for statement in FORGET_DEVICES:
                    self.db.execute(statement, (user.id,))
            self._account_changed()

    def upgrade_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        """Store a stronger hash of the same password, only if the account still has `old_hash`."""
        cur = self.db.execute("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                              (new_hash, user_id, old_hash))
        return cur.rowcount == 1

    def set_lock(self, user_id: int, failures: int, locked_until: int) -> None:
        """Mirror the server's in-memory lock, so that `user list` shows it and a restart keeps it."""
        self.db.execute("UPDATE users SET failed_logins = ?, locked_until = ? WHERE id = ?",
                        (failures, locked_until, user_id))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def record_login(self, user_id: int, success: bool, lock_seconds: int = LOCK_SECONDS,
                     lock_after: int = LOCK_AFTER_FAILURES, *, clear_lock: bool = True) -> None:
        """A login; a successful one clears the password lock only if it was a password login
        (clear_lock): a key login says nothing about the password guesses that caused the lock."""
        now = int(time.time())
        if success and clear_lock:
            self.db.execute("UPDATE users SET last_login = ?, failed_logins = 0, locked_until = 0 WHERE id = ?",
                            (now, user_id))
            return
        if success:
            self.db.execute("UPDATE users SET last_login = ? WHERE id = ?", (now, user_id))
            return
        self.db.execute(
            "UPDATE users SET failed_logins = failed_logins + 1, "
            "locked_until = CASE WHEN failed_logins + 1 >= ? THEN ? ELSE locked_until END WHERE id = ?",
            (lock_after, now + lock_seconds, user_id),
        )

    def set_identity(self, user_id: int, identity: bytes, fingerprint: bytes) -> None:
        """Register a device key; ExistsError if another account already has it (unique index)."""
        try:
            with self._transaction():
                self.db.execute("UPDATE users SET identity = ?, fingerprint = ? WHERE id = ?",
                                (identity, fingerprint, user_id))
                self._account_changed()
        except sqlite3.IntegrityError as e:
            raise ExistsError("this device key is already registered to another account") from e

    # -- messages ------------------------------------------------------------------
    def store_messages(self, items: Iterable[NewMessage | NewDirect]) -> list[StoredMessage]:
        """Insert a batch in ONE transaction (group commit); duplicates get their original receipt."""
        now_ms = timeutil.now_ms()
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            out = [self._store_direct(cur, m, now_ms) if isinstance(m, NewDirect) else self._store_one(cur, m, now_ms)
                   for m in items]
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            self.mailbox_usage.forget()  # the counts included rows that were rolled back
            self.send_usage.forget()
            raise
        return out

    def _store_one(self, cur: sqlite3.Cursor, m: NewMessage, now_ms: int) -> StoredMessage:
        """A message to the server; over the sender's limit it is refused and leaves no trace, but a
        retry of one already stored still gets its original receipt."""
        refused = self.send_usage.refusal(cur, m.sender_id, len(m.envelope))
        if refused is None:
            cur.execute(
                "INSERT INTO messages (sender_id, msg_id, sha256, sent_at_ms, stored_at_ms, envelope) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sender_id, msg_id) DO NOTHING",
                (m.sender_id, m.msg_id, m.sha256, m.sent_at_ms, now_ms, m.envelope),
            )
            if cur.rowcount == 1:
                self.send_usage.added(m.sender_id, len(m.envelope))
                return StoredMessage(m.msg_id, m.sha256, now_ms, False)
        row = cur.execute("SELECT sha256, stored_at_ms FROM messages WHERE sender_id = ? AND msg_id = ?",
                          (m.sender_id, m.msg_id)).fetchone()
        if row is None:
            return StoredMessage(m.msg_id, m.sha256, now_ms, False, refused=refused)
        return StoredMessage(m.msg_id, row[0], row[1], True)

    def _store_direct(self, cur: sqlite3.Cursor, m: NewDirect, now_ms: int) -> StoredMessage:
        """A retry is answered before the quota is checked; a refused message leaves no trace, so
        that it can be sent again once the mailbox has room."""
        if m.recipient_device is not None:
            row = cur.execute("SELECT sha256, stored_at_ms FROM device_direct_ids WHERE sender_device = ? "
                              "AND recipient_device = ? AND msg_id = ?",
                              (m.sender_device, m.recipient_device, m.msg_id)).fetchone()
        else:
            row = cur.execute("SELECT sha256, stored_at_ms FROM direct_ids WHERE sender_id = ? AND msg_id = ?",
                              (m.sender_id, m.msg_id)).fetchone()
        if row is not None:
            return StoredMessage(m.msg_id, row[0], row[1], True)
        # checked here, in the transaction: a removal committed after the server's checks (its
        # sessions end within a poll) must not leave mail that no one can be offered
        if not cur.execute(_BOTH_EXIST, (m.sender_id, m.recipient_id)).fetchone()[0]:
            return StoredMessage(m.msg_id, m.sha256, now_ms, False, refused=ACCOUNT_GONE)
        refused = self.mailbox_usage.refusal(cur, m.recipient_id, len(m.envelope))
        if refused is not None:
            return StoredMessage(m.msg_id, m.sha256, now_ms, False, refused=refused)
        if m.recipient_device is not None:
            cur.execute("INSERT INTO device_direct_ids (sender_device, recipient_device, msg_id, sha256, stored_at_ms) "
                        "VALUES (?, ?, ?, ?, ?)", (m.sender_device, m.recipient_device, m.msg_id, m.sha256, now_ms))
        else:
            cur.execute("INSERT INTO direct_ids (sender_id, msg_id, sha256, stored_at_ms) VALUES (?, ?, ?, ?)",
                        (m.sender_id, m.msg_id, m.sha256, now_ms))
        cur.execute("INSERT INTO mailbox (recipient_id, sender_id, msg_id, stored_at_ms, envelope, recipient_device, "
                    "sender_device) VALUES (?, ?, ?, ?, ?, ?, ?)", (m.recipient_id, m.sender_id, m.msg_id, now_ms,
                                                                  m.envelope, m.recipient_device, m.sender_device))
        self.mailbox_usage.added(m.recipient_id, len(m.envelope))
        return StoredMessage(m.msg_id, m.sha256, now_ms, False, cur.lastrowid)

    def prune_direct_ids(self, older_than_ms: int, limit: int) -> int:
        """Forget DIRECT ids stored before `older_than_ms`, looking at no more than the `limit` oldest rows.

        An id is needed only while an envelope carrying it could still pass the stale check: a
        replay after that is refused as STALE before the id is looked up (PROTOCOL.md 4.2). Rows
        are only ever deleted oldest first, so rowid order is storage order and the work per call
        is bounded by `limit` whatever the table holds. Returns the number of rows deleted."""
        cur = self.db.execute(
            "DELETE FROM direct_ids WHERE rowid IN (SELECT rowid FROM direct_ids ORDER BY rowid LIMIT ?) "
            "AND stored_at_ms < ?", (limit, older_than_ms))
        devices = self.db.execute(
            "DELETE FROM device_direct_ids WHERE rowid IN (SELECT rowid FROM device_direct_ids ORDER BY rowid "
            "LIMIT ?) AND stored_at_ms < ?", (limit, older_than_ms))
        return int(cur.rowcount) + int(devices.rowcount)

    def expire_mail(self, stored_before_ms: int, limit: int) -> list[Expired]:
        """Drop direct messages that waited too long (store/retention.py); their mailboxes are recounted."""
        expired = expire_mail(self.db, stored_before_ms, limit)
        for recipient in {e.recipient_id for e in expired}:
            self.mailbox_usage.forget(recipient)
        return expired

    def pending_mail(self, recipient_id: int, after_seq: int = 0, limit: int = 256,
                     device: bytes | None = None) -> list[MailItem]:
        """Undelivered direct messages for a user's session, oldest first: the account's version-1
        mail, and the version-2 mail of `device` (none for a session that is no listed device)."""
        rows = self.db.execute(
            "SELECT mailbox.id, users.name, mailbox.stored_at_ms, mailbox.envelope FROM mailbox "
            "JOIN users ON users.id = mailbox.sender_id "
            "WHERE mailbox.recipient_id = ? AND mailbox.id > ? "
            "AND (mailbox.recipient_device IS NULL OR mailbox.recipient_device = ?) ORDER BY mailbox.id LIMIT ?",
            (recipient_id, after_seq, device, limit),
        )
        return [MailItem(*r) for r in rows]

    def take_mail(self, recipient_id: int, seq: int, device: bytes | None = None) -> Taken | None:
        """Delete an acknowledged delivery of this session's (version-1 mail of the account, or
        version-2 mail of `device`); returns what the DELIVERED receipt needs if it was there."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute("SELECT msg_id, sender_id, LENGTH(envelope), recipient_device FROM mailbox "
                              "WHERE id = ? AND recipient_id = ? AND (recipient_device IS NULL OR "
                              "recipient_device = ?)", (seq, recipient_id, device)).fetchone()
            if row:
                cur.execute("DELETE FROM mailbox WHERE id = ?", (seq,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        if row:
            self.mailbox_usage.removed(recipient_id, int(row[2]))
        return Taken(bytes(row[0]), int(row[1]), None if row[3] is None else bytes(row[3])) if row else None

    def count_mail(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM mailbox").fetchone()[0])

    def count_messages(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
