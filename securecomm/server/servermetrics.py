"""Connecting a running Server to its Metrics: gauges read at scrape time, log events counted.

Gauges are read by the metrics HTTP thread while the event loop runs: each
reads one attribute, or copies a set in one C call, and tolerates a value a
moment old. The mailbox depth is counted on a read-only SQLite connection of
the scrape's own, never on the server's (those belong to the loop and to the
writer thread).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from securecomm.server.metrics import Metrics, MetricsHandler


def count_mailbox(db: Path) -> float:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    try:
        return float(con.execute("SELECT COUNT(*) FROM mailbox").fetchone()[0])
    finally:
        con.close()


def watch_server(metrics: Metrics, server: Any, db: Path | None) -> None:
    """Gauges read at scrape time; the mailbox depth only for a SQLite file (db None: PostgreSQL)."""
    from securecomm.server.session import queued_bytes

    server.metrics = metrics
    server.store.metrics = metrics
    metrics.watch(metrics.connections_open, lambda: float(len(server.sessions)))
    metrics.watch(metrics.hash_pool_queue, lambda: float(server.logins.hash_waiting))
    metrics.watch(metrics.slow_reader_bytes,
                  lambda: float(sum(queued_bytes(s.writer.transport) for s in list(server.sessions))))
    if db is not None:
        sqlite_file = db
        metrics.watch(metrics.mailbox_depth, lambda: count_mailbox(sqlite_file))


def count_log_events(metrics: Metrics) -> MetricsHandler:
    handler = MetricsHandler(metrics)
    logging.getLogger("securecomm.server").addHandler(handler)
    return handler
