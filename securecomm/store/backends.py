"""Which store a `--db` value names: a SQLite file (the default, one relay) or a PostgreSQL URL (several).

The one place that tells the two apart, so that `serve`, `user ...` and `status` agree. PostgreSQL
needs the `cluster` extra (psycopg); it is imported only when a URL is given, so the core install
and a single relay never load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securecomm.errors import UsageError
from securecomm.store.quota import MailboxLimits, SendLimits

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def describe(target: str | Path) -> str:
    """What `status` and the server log name: the engine and where (a URL without its password)."""
    if is_url(target):
        from securecomm.store.postgres import redact

        return f"PostgreSQL {redact(str(target))}"
    return f"SQLite {target}"


def open_store(target: str | Path, *, readonly: bool = False, mailbox_limits: MailboxLimits | None = None,
               send_limits: SendLimits | None = None) -> Any:
    """The store at `target`: store.db.Store for a file, store.postgres.PostgresStore for a URL."""
    if is_url(target):
        return postgres_store()(str(target), readonly=readonly, mailbox_limits=mailbox_limits, send_limits=send_limits)
    from securecomm.store.db import Store

    return Store(Path(target), readonly=readonly, mailbox_limits=mailbox_limits, send_limits=send_limits)


def postgres_store() -> Any:
    """The PostgresStore class; a clear UsageError when the cluster extra is not installed."""
    try:
        from securecomm.store.postgres import PostgresStore
    except ImportError:
        raise UsageError("a PostgreSQL --db needs the cluster extra",
                         hint="pip install 'securecomm[cluster]'") from None
    return PostgresStore


def open_file_store(target: str | Path, folder: Path, *, quota: int, max_file: int, days: float) -> Any:
    """Where files through the server live: FOLDER (store/files.py) beside a SQLite file, or the same
    PostgreSQL database as everything else (store/pgfiles.py), so that any relay serves any file."""
    if is_url(target):
        postgres_store()  # the clear error when the cluster extra is missing
        from securecomm.store.pgfiles import PgFileStore

        return PgFileStore(str(target), quota=quota, max_file=max_file, days=days)
    from securecomm.store.files import FileStore

    return FileStore(folder, quota=quota, max_file=max_file, days=days)
