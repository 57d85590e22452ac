"""Operator kit costs: an online backup against a plain file copy, and what counting a metric costs.

Run: python benchmarks/ops.py [--quick] [--json FILE]

1. Backup: a database of N stored messages (1 KiB envelopes), copied with `securecomm.store.backup`
   (SQLite's online backup API in one step, fsync, then PRAGMA integrity_check: what `securecomm
   backup` does). Baseline: shutil.copyfile of the same file (no snapshot, no check; unsafe while a
   server writes, so only a speed reference).
2. Metrics on the hot path: one Counter.inc() and one counted log event (MetricsHandler), per call.
   Baseline: an empty function call.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import per_call_us, write_json
from securecomm.server.logs import Label
from securecomm.server.metrics import Metrics, MetricsHandler
from securecomm.store.backup import backup
from securecomm.store.db import NewMessage, Store


def make_db(path: Path, rows: int) -> None:
    store = Store(path)
    user = store.add_user("alice", "x")
    for start in range(0, rows, 1024):
        store.store_messages([NewMessage(user.id, os.urandom(16), os.urandom(32), 0, os.urandom(1024))
                              for _ in range(min(1024, rows - start))])
    store.close()


def bench_backup(tmp: Path, rows: int) -> dict[str, Any]:
    db = tmp / "securecomm.db"
    make_db(db, rows)
    t0 = time.perf_counter()
    shutil.copyfile(db, tmp / "plain.db")
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    backup(db, tmp / "online.db")
    online = time.perf_counter() - t0
    return {"rows": rows, "db_bytes": db.stat().st_size, "copyfile_ms": round(plain * 1e3, 1),
            "backup_ms": round(online * 1e3, 1)}


def bench_metrics(rounds: int) -> dict[str, Any]:
    m = Metrics()
    logger = logging.getLogger("securecomm.bench.metrics")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(MetricsHandler(m))
    label = Label(1, "127.0.0.1:1", "alice")
    return {
        "empty_call_us": round(per_call_us(lambda: None, rounds), 3),
        "counter_inc_us": round(per_call_us(m.messages_receipted.inc, rounds), 3),
        "counted_log_event_us": round(per_call_us(
            lambda: logger.warning("%s login failed for %s: %s", label, "alice", "wrong password"), rounds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = 5_000 if args.quick else 50_000
    with tempfile.TemporaryDirectory() as folder:
        result = {"backup": bench_backup(Path(folder), rows), "metrics": bench_metrics(20 if args.quick else 200)}
    b, mt = result["backup"], result["metrics"]
    print(f"{'figure':38} {'value':>12} {'baseline':>12}")
    print(f"{'backup of ' + str(b['rows']) + ' messages (ms)':38} {b['backup_ms']:>12} {b['copyfile_ms']:>12}"
          "   (baseline: copyfile)")
    print(f"{'Counter.inc() (us)':38} {mt['counter_inc_us']:>12} {mt['empty_call_us']:>12}   (baseline: empty call)")
    print(f"{'counted log event (us)':38} {mt['counted_log_event_us']:>12} {mt['empty_call_us']:>12}")
    print("written:", write_json("ops", result, args.json))


if __name__ == "__main__":
    main()
