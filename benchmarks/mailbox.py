"""Direct-message delivery: live push latency, and what the never-reused `seq` costs the store.

Run: python benchmarks/mailbox.py [--quick] [--json FILE]

1. Live push (real server, real TLS, loopback): alice sends pre-sealed direct messages one after
   another to bob, who is connected. Baseline: alice's send -> RECEIPT. Figure: send -> the message
   opened, verified and shown at bob (Messenger, as `inbox --follow` runs it). Target (issue 10):
   every message shown within 1 s of its receipt.
2. Store: store (group commits of 32) and acknowledge direct messages with the mailbox of schema 2
   (INTEGER PRIMARY KEY, ids reused: the baseline) and of schema 3 (AUTOINCREMENT, never reused).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness as H
from benchmarks.common import write_json
from securecomm.cli.context import State
from securecomm.client.events import DirectMessage
from securecomm.client.login import connect_profile
from securecomm.client.messenger import Messenger
from securecomm.crypto import identity as ident
from securecomm.store.db import MIGRATIONS, NewDirect, Store

BATCH = 32


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- 1. live push ---------------------------------------------------------------------------------
def setup_server(tmp: Path) -> tuple[Any, dict[str, Path]]:
    srv_home = tmp / "srv"
    H.securecomm(srv_home, "certgen")
    server = H.start_server(srv_home, "--rate", "0", "--relay-rate", "0")
    homes = {}
    for user in ("alice", "bob"):
        H.securecomm(srv_home, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
        homes[user] = tmp / user
        H.securecomm(homes[user], "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                     str(srv_home / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
    return server, homes


async def messenger(home: Path, emit: Any) -> Messenger:
    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, profile = await connect_profile(state.paths, me)
    m = Messenger(client, me, profile.user, state.paths, emit)
    m.pump = asyncio.create_task(m.run())  # type: ignore[attr-defined]
    return m


async def live_push(homes: dict[str, Path], n: int) -> dict[str, Any]:
    shown: dict[bytes, float] = {}
    all_shown = asyncio.Event()

    def emit(ev: Any) -> None:
        if isinstance(ev, DirectMessage):
            shown[ev.msg_id] = time.perf_counter()
            if len(shown) == n:
                all_shown.set()

    bob = await messenger(homes["bob"], emit)
    alice = await messenger(homes["alice"], lambda ev: None)
    sealed = [await alice.seal_direct("bob", f"live {i}".encode()) for i in range(n)]  # before timing
    sent_at: dict[bytes, float] = {}
    receipt_ms = []
    for env in sealed:
        t0 = time.perf_counter()
        _, msg_id = await alice.send_sealed_direct("bob", env)
        sent_at[msg_id] = t0
        receipt_ms.append((time.perf_counter() - t0) * 1e3)
    await asyncio.wait_for(all_shown.wait(), 60)
    shown_ms = [(shown[m] - t0) * 1e3 for m, t0 in sent_at.items()]
    for m in (alice, bob):
        m.pump.cancel()  # type: ignore[attr-defined]
        await m.client.close()
    return {"messages": n, "receipt_p50_ms": statistics.median(receipt_ms), "receipt_p99_ms": pct(receipt_ms, 0.99),
            "shown_p50_ms": statistics.median(shown_ms), "shown_p99_ms": pct(shown_ms, 0.99),
            "shown_max_ms": max(shown_ms)}


# -- 2. the store ------------------------------------------------------------------------------------
def store_with(path: Path, reusing_ids: bool) -> Store:
    store = Store(path)
    if reusing_ids:  # put back the schema-2 mailbox: the baseline
        store.db.executescript("DROP TABLE mailbox;" + MIGRATIONS[1].split("CREATE TABLE direct_ids")[0]
                               + "ALTER TABLE mailbox ADD COLUMN recipient_device BLOB;"
                               "ALTER TABLE mailbox ADD COLUMN sender_device BLOB;")  # migration 7's columns
    return store


def store_cost(tmp: Path, n: int, reusing_ids: bool) -> float:
    store = store_with(tmp / f"store-{reusing_ids}.db", reusing_ids)
    a, b = store.add_user("alice", "h"), store.add_user("bob", "h")
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        batch = [NewDirect(a.id, b.id, i.to_bytes(16, "big"), bytes(32), bytes(1200))
                 for i in range(start, start + BATCH)]
        for stored in store.store_messages(batch):
            assert stored.seq is not None
            store.take_mail(b.id, stored.seq)
    elapsed = time.perf_counter() - t0
    store.close()
    return elapsed / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    n_live, n_store = (100, 256) if args.quick else (500, 2048)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server, homes = setup_server(tmp)
        try:
            live = asyncio.run(live_push(homes, n_live))
        finally:
            server.stop()
        store = {"messages": n_store, "schema2_reused_ids_us": store_cost(tmp, n_store, True),
                 "schema3_autoincrement_us": store_cost(tmp, n_store, False)}
    store["overhead"] = store["schema3_autoincrement_us"] / store["schema2_reused_ids_us"] - 1
    print(f"live push, {live['messages']} messages to a connected recipient (ms)      p50      p99      max")
    print(f"  baseline: send -> receipt at the sender                       {live['receipt_p50_ms']:8.2f} "
          f"{live['receipt_p99_ms']:8.2f}")
    print(f"  send -> verified and shown at the recipient                   {live['shown_p50_ms']:8.2f} "
          f"{live['shown_p99_ms']:8.2f} {live['shown_max_ms']:8.2f}   target: max < 1000")
    print(f"store + ack per direct message, {n_store} in commits of {BATCH} (µs)")
    print(f"  baseline: schema 2 (ids reused)                               {store['schema2_reused_ids_us']:8.1f}")
    print(f"  schema 3 (AUTOINCREMENT, never reused)                        {store['schema3_autoincrement_us']:8.1f}"
          f"   {store['overhead']:+.1%}")
    print("wrote", write_json("mailbox", {"quick": args.quick, "live_push": live, "store": store}, args.json))


if __name__ == "__main__":
    main()
