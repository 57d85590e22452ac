"""Files through the server on PostgreSQL: chunk rows vs large objects vs the SQLite relay's folder (issue 13).

Run: python benchmarks/postgres_files.py [--quick] [--json FILE]

One file of SIZE bytes uploaded in 256 KiB FILE_PUT chunks (one durable transaction each, as the relay
does) and read back from offset 0, straight into each store from one thread, as the relay's file
worker does. Rounds alternate the three candidates; the figures are medians (MiB/s).

- sqlite: store/files.py (the single relay's layout: a .part file appended, fsync at the end);
- chunks: store/pgfiles.py (bytea rows, STORAGE EXTERNAL, `received` in the same transaction);
- large objects: the same transaction shape on a large object (lo_put at the offset, lo_get to read):
  the alternative measured before choosing the chunk table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_json

CHUNK = 256 * 1024


class LargeObjects:
    """The large-object alternative: a row per file naming an oid, chunks written with lo_put."""

    def __init__(self, url: str) -> None:
        from securecomm.store.postgres import connect

        self.db = connect(url)
        self.db.execute("CREATE TABLE IF NOT EXISTS lo_files (id BYTEA PRIMARY KEY, oid OID NOT NULL, "
                        "size BIGINT NOT NULL, received BIGINT NOT NULL DEFAULT 0)")

    def offer(self, size: int) -> bytes:
        file_id = os.urandom(16)
        with self.db.transaction():
            self.db.execute("INSERT INTO lo_files (id, oid, size) VALUES (%s, lo_create(0), %s)", (file_id, size))
        return file_id

    def put(self, file_id: bytes, offset: int, data: bytes) -> None:
        with self.db.transaction():
            row = self.db.execute("SELECT oid, received FROM lo_files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
            assert row is not None and row[1] == offset
            self.db.execute("SELECT lo_put(%s, %s, %s)", (row[0], offset, data))
            self.db.execute("UPDATE lo_files SET received = %s WHERE id = %s", (offset + len(data), file_id))

    def read(self, file_id: bytes, offset: int, n: int) -> bytes:
        with self.db.transaction():
            (oid,) = self.db.execute("SELECT oid FROM lo_files WHERE id = %s", (file_id,)).fetchone()  # type: ignore[misc]
            return bytes(self.db.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, n)).fetchone()[0])  # type: ignore[index]

    def delete(self, file_id: bytes) -> None:
        with self.db.transaction():
            self.db.execute("SELECT lo_unlink(oid) FROM lo_files WHERE id = %s", (file_id,))
            self.db.execute("DELETE FROM lo_files WHERE id = %s", (file_id,))


def _store_round(store: Any, data: bytes) -> tuple[float, float]:
    digest = hashlib.sha256(data).digest()
    t0 = time.perf_counter()
    file_id = store.offer("alice", "bob", len(data), digest).file_id
    for at in range(0, len(data), CHUNK):
        store.put("alice", file_id, at, data[at : at + CHUNK])
    t1 = time.perf_counter()
    _, f = store.open_for("bob", file_id)
    got = 0
    with f:
        while block := f.read(CHUNK):
            got += len(block)
    t2 = time.perf_counter()
    assert got == len(data)
    store.done("bob", file_id)
    return t1 - t0, t2 - t1


def _lo_round(lo: LargeObjects, data: bytes) -> tuple[float, float]:
    t0 = time.perf_counter()
    file_id = lo.offer(len(data))
    for at in range(0, len(data), CHUNK):
        lo.put(file_id, at, data[at : at + CHUNK])
    t1 = time.perf_counter()
    got = 0
    while got < len(data):
        got += len(lo.read(file_id, got, CHUNK))
    t2 = time.perf_counter()
    lo.delete(file_id)
    return t1 - t0, t2 - t1


def measure(url: str, tmp: Path, size: int, rounds: int) -> dict[str, Any]:
    from securecomm.store.files import FileStore
    from securecomm.store.pgfiles import PgFileStore
    from securecomm.store.postgres import PostgresStore

    PostgresStore(url, migrate=True).close()
    big = 1 << 40
    sqlite = FileStore(tmp / "files", quota=big, max_file=big)
    chunks = PgFileStore(url, quota=big, max_file=big)
    lo = LargeObjects(url)
    data = os.urandom(size)
    times: dict[str, list[tuple[float, float]]] = {"sqlite": [], "chunks": [], "large_objects": []}
    try:
        for _ in range(rounds):  # alternated, so a busy moment on the shared machine hits all three
            times["sqlite"].append(_store_round(sqlite, data))
            times["chunks"].append(_store_round(chunks, data))
            times["large_objects"].append(_lo_round(lo, data))
    finally:
        sqlite.close()
        chunks.close()
        lo.db.close()
    mib = size / (1 << 20)
    return {name: {"upload_mib_s": mib / statistics.median(t[0] for t in ts),
                   "download_mib_s": mib / statistics.median(t[1] for t in ts)} for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller file, fewer rounds")
    ap.add_argument("--json", type=Path, help="where to write the figures [benchmarks/results-postgres-files.json]")
    args = ap.parse_args()
    from tests.cluster import PostgresServer, _pg_binaries

    bin_dir = _pg_binaries()
    if bin_dir is None:
        sys.exit("postgres_files: needs PostgreSQL: apt-get install postgresql")
    size, rounds = (8 << 20, 3) if args.quick else (64 << 20, 5)
    with tempfile.TemporaryDirectory(prefix="securecomm-bench-") as tmp:
        pg = PostgresServer(bin_dir)
        try:
            pg.start()
            results = {"size": size, "rounds": rounds, "stores": measure(pg.new_database(), Path(tmp), size, rounds)}
        finally:
            pg.destroy()
    print(f"one {size >> 20} MiB file in 256 KiB chunks, median of {rounds} alternated rounds")
    print(f"{'store':16} {'upload MiB/s':>13} {'download MiB/s':>15}")
    for name, r in results["stores"].items():
        print(f"{name:16} {r['upload_mib_s']:13.1f} {r['download_mib_s']:15.1f}")
    print(f"wrote {write_json('postgres-files', results, args.json)}")


if __name__ == "__main__":
    main()
