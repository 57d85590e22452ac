"""Online backup and offline restore of the SQLite database, and the lock that tells them apart.

Theory of operation: a running server holds an *exclusive* flock on `<db>.lock`
for as long as it serves. One SQLite file serves one relay: a second `serve` on
the same file would store mail that the first relay's connected users are never
woken for (it is another process; several relays need PostgreSQL and a bus), so
it is refused at start. `restore` takes the same exclusive lock without waiting:
if a server holds it, the database is live and restore refuses. The
lock lives in its own file because SQLite itself uses POSIX record locks on the
database file, and the two kinds must not be mixed on one file.

A backup uses SQLite's online backup API in a single step (`pages=-1`): that
copies every page inside one read transaction, which in WAL mode sees one
committed snapshot while the server keeps committing beside it (a stepwise
backup would restart each time the server writes, and could starve under load).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from securecomm.errors import ExistsError, IntegrityError, NotFoundError, UsageError
from securecomm.files import ensure_dir

#: Tables every securecomm database has; a file without them is not one of ours.
REQUIRED_TABLES = ("users", "messages", "mailbox")


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def _open_lock(db: Path) -> int:
    ensure_dir(db.parent)
    return os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)


@contextlib.contextmanager
def serving(db: Path) -> Iterator[None]:
    """Held by `serve` while it runs: one relay per SQLite file, and `restore` refuses a live one."""
    fd = _open_lock(db)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise ExistsError(f"{db} is in use by another securecomm serve (or a restore)",
                              hint="stop the other server first; several relays need --db postgresql://... "
                                   "and --bus (README \"Several relays\")") from e
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_live(db: Path) -> bool:
    """Whether a server holds the database open (its shared lock is taken)."""
    if not lock_path(db).exists():
        return False
    fd = os.open(lock_path(db), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def integrity_problem(path: Path) -> str | None:
    """Why `path` is not a sound securecomm database, or None. Opened read-only: the check never writes."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return f"cannot open it ({e})"
    try:
        rows = [r[0] for r in con.execute("PRAGMA integrity_check(20)")]
        if rows != ["ok"]:
            return "PRAGMA integrity_check says: " + "; ".join(str(r) for r in rows)
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in REQUIRED_TABLES if t not in names]
        return f"it is not a securecomm database (no table {missing[0]!r})" if missing else None
    except sqlite3.DatabaseError as e:  # "file is not a database", a truncated header
        return f"it is not a database ({e})"
    finally:
        con.close()


def _copy(source: sqlite3.Connection, target: Path) -> None:
    """Every page of `source` into a new private file `target`, in one read transaction."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never through a planted file
    os.close(fd)
    dest = sqlite3.connect(target)
    try:
        source.backup(dest, pages=-1)
        dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    finally:
        dest.close()
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def _temporary(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.partial")


def _publish(temp: Path, final: Path, force: bool) -> None:
    """Rename the finished copy into place; without force, never over an existing file."""
    if force:
        os.replace(temp, final)
    else:
        try:
            os.link(temp, final)  # fails if final exists, even if it appeared meanwhile
        finally:
            temp.unlink(missing_ok=True)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _is_live_file(out: Path, db: Path) -> bool:
    """Whether `out` is the database, one of SQLite's files beside it (-wal, -shm, -journal), its lock,
    or a link to one of them (attacker's check: `backup --force` onto them swapped the database under a
    running server, corrupted it through its WAL, or freed the lock so that `restore` and a second `serve`
    went ahead)."""
    real = db.resolve()  # SQLite keeps its -wal and -shm beside the file a link points to (the re-check)
    live = [db, lock_path(db), *(p.with_name(p.name + end) for p in (db, real) for end in ("-wal", "-shm", "-journal")),
            lock_path(real)]
    target = out.resolve()
    for path in live:
        if path.resolve() == target:
            return True
        with contextlib.suppress(OSError):
            if out.exists() and path.exists() and os.path.samefile(out, path):
                return True
    return False


def backup(db: Path, out: Path, *, force: bool = False) -> int:
    """A consistent copy of a (possibly live) database at `out`; returns its size in bytes."""
    if not db.exists():
        raise NotFoundError(f"no database at {db}", hint="pass --db PATH, or the server's --home")
    if out.is_dir():
        raise ExistsError(f"{out} is a folder", hint=f"name a file in it, e.g. {out / 'securecomm.db'}")
    if _is_live_file(out, db):
        raise UsageError(f"{out} is one of the database's own files: a backup there would replace it under a "
                         "running server", hint="name a file elsewhere, e.g. in /var/backups")
    if out.exists() and not force:
        raise ExistsError(f"{out} already exists", hint="pick another file, or pass --force to replace it")
    if not out.absolute().parent.is_dir():  # the new-user check: "internal error (FileNotFoundError)"
        raise NotFoundError(f"folder {out.absolute().parent} does not exist", hint="create it first (mkdir -p), "
                            "or name a file in a folder that exists")
    temp = _temporary(out.absolute())
    temp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        source.execute("PRAGMA busy_timeout=5000")
        _copy(source, temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    problem = integrity_problem(temp)
    if problem:
        temp.unlink(missing_ok=True)
        raise IntegrityError(f"the copy of {db} failed its check: {problem}")
    try:
        _publish(temp, out, force)
    except FileExistsError as e:
        raise ExistsError(f"{out} already exists", hint="pick another file, or pass --force to replace it") from e
    return out.stat().st_size


def restore(backup_file: Path, db: Path, *, force: bool = False) -> None:
    """Put `backup_file` in place of `db`: checked first, never over a live database."""
    if not backup_file.is_file():
        raise NotFoundError(f"no backup at {backup_file}")
    problem = integrity_problem(backup_file)
    if problem:
        raise IntegrityError(f"{backup_file} cannot be restored: {problem}", hint="nothing was changed")
    fd = _open_lock(db)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the new file is in place
        except BlockingIOError as e:
            raise ExistsError(f"{db} is live: a server is using it", hint="stop the server first "
                              "(systemctl stop securecomm), then restore; nothing was changed") from e
        if db.exists() and not force:
            raise ExistsError(f"{db} already exists", hint="pass --force to replace it (the server must be stopped)")
        _replace(backup_file, db)
    finally:
        os.close(fd)


def _replace(backup_file: Path, db: Path) -> None:
    temp = _temporary(db)
    temp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
    try:
        _copy(source, temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    # A -wal left by the old database would be replayed onto the new one: remove it first.
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    _publish(temp, db, force=True)
