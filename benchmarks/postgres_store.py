"""PostgreSQL store vs SQLite store, same run, same machine (issue 13).

Run: python benchmarks/postgres_store.py [--quick] [--json FILE]

A private PostgreSQL (tests/cluster.py: initdb in a temporary folder, a free loopback port,
fsync and synchronous_commit on, as installed) and a SQLite file (WAL, synchronous=FULL): both
durable, so each commit waits for the disk.

1. Store: group commits of BATCH messages to the server (1 KiB envelopes) and of direct messages,
   straight into each store from one thread, as the relay's store thread does. Baseline: SQLite.
2. Relay: pipelined sends with durable receipts through a real `securecomm serve` (TLS on
   loopback, one connection, 2,000 in flight, as benchmarks/run.py figure 2) with `--db URL`
   against the same relay on SQLite. Target: PostgreSQL at least 50% of SQLite's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_json
from securecomm.store.db import NewDirect, NewMessage, Store

BATCH = 256
BODY = bytes(range(256)) * 4  # 1 KiB, as benchmarks/run.py


def _messages(sender: int, n: int, start: int) -> list[NewMessage]:
    return [NewMessage(sender, (start + i).to_bytes(16, "big"), bytes(32), 0, BODY) for i in range(n)]


def _directs(sender: int, recipient: int, n: int, start: int) -> list[NewDirect]:
    return [NewDirect(sender, recipient, (start + i).to_bytes(16, "big"), bytes(32), BODY) for i in range(n)]


def store_rates(open_store: Callable[[], Any], n: int) -> dict[str, float]:
    """Messages per second through store_messages in batches of BATCH, for SEND and for DIRECT."""
    store = open_store()
    alice, bob = store.add_user("alice", "x").id, store.add_user("bob", "x").id
    out = {}
    for kind, make in (("send", lambda i: _messages(alice, BATCH, i)),
                       ("direct", lambda i: _directs(alice, bob, BATCH, i))):
        store.store_messages(make(10**9))  # warm-up: first counts, plans
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            store.store_messages(make(i))
        out[f"{kind}_msgs_per_s"] = n / (time.perf_counter() - t0)
    store.close()
    return out


def measure_store(pg: Any, tmp: Path, n: int) -> dict[str, Any]:
    from securecomm.store.postgres import PostgresStore

    url = pg.new_database()
    PostgresStore(url, migrate=True).close()
    sqlite = store_rates(lambda: Store(tmp / "bench.sqlite"), n)
    postgres = store_rates(lambda: PostgresStore(url), n)
    return {"messages": n, "batch": BATCH, "sqlite": sqlite, "postgres": postgres,
            "ratio": {k: postgres[k] / sqlite[k] for k in sqlite}}


# -- 2. relay: pipelined durable sends through `serve` --------------------------------------------
def start_relay(tmp: Path, name: str, db: list[str]) -> tuple[Any, Path]:
    """A relay with alice's account (in its store) and her logged-in client home."""
    from benchmarks import harness as H

    srv, home = tmp / f"srv-{name}", tmp / f"alice-{name}"
    H.securecomm(srv, "certgen")
    H.securecomm(srv, "user", "add", "alice", *db, "--password-stdin", input=(H.PASSWORD + "\n").encode())
    server = H.start_server(srv, "--rate", "0", "--relay-rate", "0", *db)
    H.securecomm(home, "user", "login", "alice", "--server", f"localhost:{server.port}", "--ca",
                 str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
    return server, home


async def pipelined(home: Path, server_pub: Path, n: int) -> float:
    """n sealed 1 KiB SENDs, 2,000 in flight on one connection, each waiting for its durable receipt."""
    from securecomm.cli.context import State
    from securecomm.client.login import connect_profile
    from securecomm.crypto import envelope
    from securecomm.crypto import identity as ident

    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    server_identity = ident.load_public(server_pub)
    sealed = [envelope.seal(BODY, me, server_identity) for _ in range(n)]
    client, _ = await connect_profile(state.paths, me)
    async with client:
        window = asyncio.Semaphore(2000)

        async def one(env: bytes) -> Any:
            async with window:
                return await client.submit(env)

        t0 = time.perf_counter()
        receipts = await asyncio.gather(*(one(e) for e in sealed))
        elapsed = time.perf_counter() - t0
    assert len({r.msg_id for r in receipts}) == n
    return n / elapsed


def measure_relay(pg: Any, tmp: Path, n: int) -> dict[str, Any]:
    from securecomm.store.postgres import PostgresStore

    url = pg.new_database()
    PostgresStore(url, migrate=True).close()
    out: dict[str, Any] = {"messages": n}
    for name, db in (("sqlite", []), ("postgres", ["--db", url])):
        server, home = start_relay(tmp, name, db)
        try:
            out[name] = asyncio.run(pipelined(home, tmp / f"srv-{name}" / "server" / "identity.pub", n))
        finally:
            server.stop()
    out["ratio"] = out["postgres"] / out["sqlite"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages: proves the harness works")
    ap.add_argument("--json", type=Path, help="where to write the figures [benchmarks/results-postgres.json]")
    args = ap.parse_args()
    from tests.cluster import PostgresServer, _pg_binaries

    bin_dir = _pg_binaries()
    if bin_dir is None:
        sys.exit("postgres_store: needs PostgreSQL: apt-get install postgresql")
    n = 2048 if args.quick else 20480
    with tempfile.TemporaryDirectory(prefix="securecomm-bench-") as tmp:
        pg = PostgresServer(bin_dir)
        try:
            pg.start()
            results = {"store": measure_store(pg, Path(tmp), n),
                       "relay": measure_relay(pg, Path(tmp), 1500 if args.quick else 10000)}
        finally:
            pg.destroy()
    s = results["store"]
    print(f"{'figure':44} {'sqlite':>12} {'postgresql':>12} {'ratio':>7}")
    for kind in ("send", "direct"):
        key = f"{kind}_msgs_per_s"
        print(f"{'store, ' + kind + ', batches of ' + str(BATCH) + ' (msg/s)':44} {s['sqlite'][key]:12,.0f} "
              f"{s['postgres'][key]:12,.0f} {s['ratio'][key]:7.2f}")
    r = results["relay"]
    print(f"{'relay, pipelined durable sends (msg/s)':44} {r['sqlite']:12,.0f} {r['postgres']:12,.0f} "
          f"{r['ratio']:7.2f}   target >= 0.50")
    print(f"wrote {write_json('postgres', results, args.json)}")


if __name__ == "__main__":
    main()
