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
from securecomm.store.urls import redact

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


#: What to install when a URL or --bus needs the cluster extra's drivers (psycopg, nats-py).
CLUSTER_HINT = "pip install 'securecomm[cluster]' (from a checkout: .venv/bin/pip install '.[cluster]')"


def require_cluster(what: str, module: str) -> None:
    """UsageError (exit 2) naming the extra when `module` (psycopg, nats) is not installed."""
    import importlib.util

    try:
        missing = importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        missing = True
    if missing:
        raise UsageError(f"{what} needs the cluster extra, which is not installed", hint=CLUSTER_HINT)


def describe(target: str | Path) -> str:
    """What `status` and the server log name: the engine and where (a URL without its password)."""
    if is_url(target):
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
    require_cluster("a PostgreSQL --db", "psycopg")
    from securecomm.store.postgres import PostgresStore

    return PostgresStore


def open_file_store(target: str | Path, folder: Path, *, quota: int, max_file: int, days: float,
                    sender_quota: int | None = None) -> Any:
    """Where files through the server live: FOLDER (store/files.py) beside a SQLite file, or the same
    PostgreSQL database as everything else (store/pgfiles.py), so that any relay serves any file."""
    if is_url(target):
        postgres_store()  # the clear error when the cluster extra is missing
        from securecomm.store.pgfiles import PgFileStore

        return PgFileStore(str(target), quota=quota, max_file=max_file, days=days,
                           sender_quota=sender_quota or quota)
    from securecomm.store.files import FileStore

    return FileStore(folder, quota=quota, max_file=max_file, days=days, sender_quota=sender_quota or quota)
