"""Moving a single-relay deployment from its SQLite file to PostgreSQL (`securecomm db copy`).

Nothing may be lost and nothing may change meaning, so:
- the source is read in one SQLite read transaction (a consistent snapshot) and never written;
- ids are copied as they are: users.id is what mail and message rows name, and mailbox.id is the
  DELIVER `seq` a client may already have been offered;
- the PostgreSQL sequences then start above every id SQLite ever handed out (sqlite_sequence), so
  neither a removed user's id nor an acknowledged message's seq is given out again (see
  store/db.py migrations 3 and 4 for why that matters);
- everything is written in one PostgreSQL transaction, and the row counts of both sides are
  compared before it commits: a mismatch rolls the whole copy back;
- files through the server (the `files` folder beside the SQLite file: files.db and the ciphertext)
  are copied too, complete and unfinished, into store/pgfiles.py's tables: rows and bytes counted on
  both sides. The ciphertext is streamed one chunk at a time, so memory stays flat.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securecomm.errors import ExistsError, IntegrityError, NotFoundError, SchemaVersionError
from securecomm.store import db as sqlite_db
from securecomm.store.postgres import COUNT_USAGE, PostgresStore, redact

#: Tables copied, with their columns in order (the same names in both schemas). Literal SQL only.
_TABLES: dict[str, tuple[str, str]] = {
    "users": ("SELECT id, name, role, password_hash, created_at, last_login, failed_logins, locked_until, "
              "identity, fingerprint FROM users ORDER BY id",
              "COPY users (id, name, role, password_hash, created_at, last_login, failed_logins, locked_until, "
              "identity, fingerprint) FROM STDIN"),
    "messages": ("SELECT id, sender_id, msg_id, sha256, sent_at_ms, stored_at_ms, envelope FROM messages ORDER BY id",
                 "COPY messages (id, sender_id, msg_id, sha256, sent_at_ms, stored_at_ms, envelope) FROM STDIN"),
    "mailbox": ("SELECT id, recipient_id, sender_id, msg_id, stored_at_ms, envelope, recipient_device, "
                "sender_device FROM mailbox ORDER BY id",
                "COPY mailbox (id, recipient_id, sender_id, msg_id, stored_at_ms, envelope, recipient_device, "
                "sender_device) FROM STDIN"),
    "direct_ids": ("SELECT sender_id, msg_id, sha256, stored_at_ms FROM direct_ids ORDER BY rowid",
                   "COPY direct_ids (sender_id, msg_id, sha256, stored_at_ms) FROM STDIN"),
    # devices (docs/PROTOCOL.md 6; migrations 6 and 8): a version-2 message keeps the device it is for
    "user_keys": ("SELECT user_id, user_key, counter, device_list FROM user_keys ORDER BY user_id",
                  "COPY user_keys (user_id, user_key, counter, device_list) FROM STDIN"),
    "devices": ("SELECT device_id, user_id, cert, name, added_ms, last_seen_ms, max_prekey_id FROM devices "
                "ORDER BY device_id",
                "COPY devices (device_id, user_id, cert, name, added_ms, last_seen_ms, max_prekey_id) FROM STDIN"),
    "prekeys": ("SELECT device_id, kind, prekey_id, prekey FROM prekeys ORDER BY device_id, kind, prekey_id",
                "COPY prekeys (device_id, kind, prekey_id, prekey) FROM STDIN"),
    "pairings": ("SELECT digest, user_id, device_id, identity, name, expires_ms, used, approval FROM pairings "
                 "ORDER BY digest",
                 "COPY pairings (digest, user_id, device_id, identity, name, expires_ms, used, approval) FROM STDIN"),
    "removed_devices": ("SELECT device_id, user_id, identity, removed_ms FROM removed_devices ORDER BY device_id",
                        "COPY removed_devices (device_id, user_id, identity, removed_ms) FROM STDIN"),
    "device_direct_ids": ("SELECT sender_device, recipient_device, msg_id, sha256, stored_at_ms FROM "
                          "device_direct_ids ORDER BY rowid",
                          "COPY device_direct_ids (sender_device, recipient_device, msg_id, sha256, stored_at_ms) "
                          "FROM STDIN"),
}
#: The same literal statements count the same tables in SQLite and PostgreSQL.
_PG_COUNTS = {
    "users": "SELECT COUNT(*) FROM users",
    "messages": "SELECT COUNT(*) FROM messages",
    "mailbox": "SELECT COUNT(*) FROM mailbox",
    "direct_ids": "SELECT COUNT(*) FROM direct_ids",
    "user_keys": "SELECT COUNT(*) FROM user_keys",
    "devices": "SELECT COUNT(*) FROM devices",
    "prekeys": "SELECT COUNT(*) FROM prekeys",
    "pairings": "SELECT COUNT(*) FROM pairings",
    "removed_devices": "SELECT COUNT(*) FROM removed_devices",
    "device_direct_ids": "SELECT COUNT(*) FROM device_direct_ids",
}
#: Rows streamed between the two databases at a time: bounds memory whatever the mailbox holds.
FETCH_ROWS = 1000


@dataclass(frozen=True)
class Copied:
    table: str
    sqlite_rows: int
    postgres_rows: int


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite file, read-only, at the schema version this code writes."""
    if not path.is_file():
        raise NotFoundError(f"no SQLite database at {path}",
                            hint="pass the server's database file (`securecomm paths` shows where it is)")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    (version,) = con.execute("PRAGMA user_version").fetchone()
    if version != len(sqlite_db.MIGRATIONS):
        con.close()
        raise SchemaVersionError(f"the SQLite database {path} is at schema version {version}, this securecomm "
                                 f"copies version {len(sqlite_db.MIGRATIONS)}",
                                 hint=f"upgrade it first: securecomm user list --db {path}" if version <
                                 len(sqlite_db.MIGRATIONS) else "use the securecomm version that wrote it")
    return con


def copy_to_postgres(path: Path, url: str) -> list[Copied]:
    """Copy everything durable from the SQLite file at `path` into the (empty) database at `url`."""
    source = open_source(path)
    target = PostgresStore(url, migrate=True)
    try:
        source.execute("BEGIN")  # one snapshot of the source for every table
        with target.db.transaction(), target.db.cursor() as cur:
            _require_empty(cur, url)
            for select, copy_sql in _TABLES.values():
                _stream(source, cur, select, copy_sql)
            _carry_counters(source, cur)
            copied = [Copied(t, _count(source, q), int(cur.execute(q).fetchone()[0]))  # type: ignore[index]
                      for t, q in _PG_COUNTS.items()]
            copied += _copy_files(path.parent / "files", cur)
            if any(c.sqlite_rows != c.postgres_rows for c in copied):
                raise IntegrityError("row counts differ after the copy; nothing was committed: " +
                                     ", ".join(f"{c.table} {c.sqlite_rows} -> {c.postgres_rows}" for c in copied))
        source.execute("COMMIT")
    finally:
        source.close()
        target.close()
    return copied


def _require_empty(cur: Any, url: str) -> None:
    if any(cur.execute(q).fetchone()[0] for q in (*_PG_COUNTS.values(), "SELECT COUNT(*) FROM files")):
        raise ExistsError(f"the PostgreSQL database at {redact(url)} already holds securecomm data",
                          hint="copy into a new, empty database (createdb), then point the relays at it")


def _stream(source: sqlite3.Connection, cur: Any, select: str, copy_sql: str) -> None:
    rows = source.execute(select)
    with cur.copy(copy_sql) as copy:
        while batch := rows.fetchmany(FETCH_ROWS):
            for row in batch:
                copy.write_row(row)


def _carry_counters(source: sqlite3.Connection, cur: Any) -> None:
    """Sequences above every id SQLite gave out; the account change counter as it was."""
    for table in ("users", "mailbox", "messages"):
        cur.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST(%s, 1), %s > 0)",
                    (table, _high_water(source, table), _high_water(source, table)))
    for statement in COUNT_USAGE:  # the quotas' counts (postgres.py migration 7) of what was copied
        cur.execute(statement)
    row = source.execute("SELECT value FROM counters WHERE name = 'accounts'").fetchone()
    cur.execute("UPDATE counters SET value = %s WHERE name = 'accounts'", (int(row[0]) if row else 0,))


_MAX_IDS = {
    "users": "SELECT COALESCE(MAX(id), 0) FROM users",
    "mailbox": "SELECT COALESCE(MAX(id), 0) FROM mailbox",
    "messages": "SELECT COALESCE(MAX(id), 0) FROM messages",
}


def _high_water(source: sqlite3.Connection, table: str) -> int:
    """The highest id SQLite handed out for `table`: AUTOINCREMENT remembers deleted ones."""
    seq = source.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    (top,) = source.execute(_MAX_IDS[table]).fetchone()
    return max(int(seq[0]) if seq else 0, int(top))


def _count(source: sqlite3.Connection, query: str) -> int:
    return int(source.execute(query).fetchone()[0])


def _copy_files(folder: Path, cur: Any) -> list[Copied]:
    """The single relay's files (store/files.py) into PostgreSQL's (store/pgfiles.py): rows, then each
    file's ciphertext as chunk rows of at most CHUNK bytes; unfinished uploads keep what they hold."""
    from securecomm.wire.files import CHUNK

    rows, held, copied = 0, 0, set()
    if (folder / "files.db").is_file():
        files = sqlite3.connect(f"file:{folder / 'files.db'}?mode=ro", uri=True, isolation_level=None)
        try:
            for file_id, sender, recipient, size, sha256, complete, created, expires in files.execute(
                    "SELECT id, sender, recipient, size, sha256, complete, created, expires FROM files ORDER BY id"):
                path = folder / (file_id.hex() if complete else f"{file_id.hex()}.part")
                try:
                    f = path.open("rb")
                except FileNotFoundError:
                    if complete:
                        raise IntegrityError(f"files.db lists the complete file {file_id.hex()}, but {path} is "
                                             "missing; nothing was committed",
                                             hint="restore it from a backup, or delete the file's row") from None
                    continue  # an offer whose part was never created: nothing to resume
                with f:
                    received, touched = os.fstat(f.fileno()).st_size, max(created, os.fstat(f.fileno()).st_mtime)
                    cur.execute("INSERT INTO files (id, sender, recipient, size, sha256, received, complete, "
                                "created, touched, expires) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                                (file_id, sender, recipient, size, sha256, received, bool(complete), created,
                                 touched, expires))
                    with cur.copy("COPY file_chunks (file_id, at, data) FROM STDIN") as copy:
                        at = 0
                        while data := f.read(CHUNK):
                            copy.write_row((file_id, at, data))
                            at += len(data)
                rows, held = rows + 1, held + received
                copied.add(bytes(file_id))
            has_fetchers = files.execute("SELECT 1 FROM sqlite_master WHERE name = 'file_fetchers'").fetchone()
            for file_id, device in files.execute("SELECT file_id, device FROM file_fetchers") if has_fetchers else ():
                if bytes(file_id) in copied:  # the devices each file still waits for (4.4)
                    cur.execute("INSERT INTO file_fetchers (file_id, device) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                (file_id, device))
        finally:
            files.close()
    (pg_rows,) = cur.execute("SELECT COUNT(*) FROM files").fetchone()
    (pg_bytes,) = cur.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM file_chunks").fetchone()
    return [Copied("files", rows, int(pg_rows)), Copied("file_bytes", held, int(pg_bytes))]
