"""Several relays over one PostgreSQL and one NATS (issue 13): same run, same machine, baselines beside.

Run: python benchmarks/relays.py [--quick] [--json FILE]

Private PostgreSQL and nats-server (tests/cluster.py), real `securecomm serve --db URL --bus URL`
relays, in-process clients over real TLS (tests/relays.py: accounts written straight into the store).

1. Direct message latency, one at a time: SEND -> the recipient's DELIVER, and -> the sender's
   receipt, with the recipient on another relay vs on the same relay. Target: cross-relay p50 < 3 ms.
2. Room fan-out: one member sends lines to a room of nine, three per relay on three relays vs all
   nine on one relay; the time until every member has every line.
3. `--workers 2` vs `--workers 1`: 100 connections pipelining direct messages (to offline users, so
   each is one durable commit and a receipt). Target: at least 1.6x.
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

from benchmarks.common import machine, write_json


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _group(tmp: Path, url: str, ports: list[int], n: int, prefix: str) -> list[Any]:
    from tests.relays import make_users, peers

    identities = await asyncio.to_thread(make_users, url, [f"{prefix}{i:02d}" for i in range(n)])
    group = list(peers(tmp, identities))
    await asyncio.gather(*(p.connect(ports[i % len(ports)]) for i, p in enumerate(group)))
    return group


async def latency(tmp: Path, url: str, ports: list[int], n: int) -> dict[str, Any]:
    """Sender on ports[0]; one recipient there, one on ports[1]."""
    group = await _group(tmp, url, [ports[0], ports[1], ports[0]], 3, "lat")
    sender, remote, local = group
    out: dict[str, Any] = {}
    try:
        for name, to in (("same_relay", local), ("cross_relay", remote)):
            deliver, receipt = [], []
            for k in range(n):
                sealed, msg_id = sender.seal(to.me.public, b"x" * 64)
                t0 = time.perf_counter()
                sent = asyncio.create_task(sender.send_direct(to.name, sealed, msg_id))
                sent.add_done_callback(lambda _, t0=t0, r=receipt: r.append((time.perf_counter() - t0) * 1000))
                await to.until(lambda to=to, msg_id=msg_id: msg_id in to.delivered)
                deliver.append((time.perf_counter() - t0) * 1000)
                await sent
                if k == 0:  # the first warms caches and connections
                    deliver.clear()
                    receipt.clear()
            out[name] = {"deliver_p50_ms": statistics.median(deliver), "deliver_p99_ms": _pct(deliver, 0.99),
                         "receipt_p50_ms": statistics.median(receipt), "receipt_p99_ms": _pct(receipt, 0.99)}
    finally:
        await asyncio.gather(*(p.close() for p in group))
    return out


async def fanout(tmp: Path, url: str, ports: list[int], lines: int, prefix: str) -> float:
    """Lines per second into a room of nine until every member has every line."""
    from securecomm.crypto import room as roomcrypto
    from securecomm.wire import protocol as P

    group = await _group(tmp, url, ports, 9, prefix)
    try:
        for p in group:
            await p.client.request("join", room="bench")
        sender, key = group[0], roomcrypto.SenderKey.generate()
        payloads = [roomcrypto.encrypt("bench", b"y" * 200, sender.me, key) for _ in range(lines)]
        t0 = time.perf_counter()
        for payload in payloads:  # pipelined; the members' arrivals are what is timed
            sender.client.send_event(P.RoomSend("bench", payload))
        for p in group[1:]:
            await p.until(lambda p=p: sum(p.room_lines.values()) >= lines)
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(p.close() for p in group))
    return lines / elapsed


async def pipelined(tmp: Path, url: str, port: int, conns: int, per: int, prefix: str) -> float:
    """conns connections, each with `per` direct messages in flight to an offline user; messages/s."""
    from tests.relays import make_users

    sinks = await asyncio.to_thread(make_users, url, [f"{prefix}sink"])
    sink = sinks[f"{prefix}sink"].public
    group = await _group(tmp, url, [port], conns, prefix)
    sealed = {p.name: [p.seal(sink, b"z" * 256) for _ in range(per)] for p in group}
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(p.send_direct(f"{prefix}sink", env, m) for p in group for env, m in sealed[p.name]))
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(p.close() for p in group))
    return conns * per / elapsed


def run(tmp: Path, quick: bool) -> dict[str, Any]:
    from tests.cluster import NatsServer, PostgresServer, _pg_binaries
    from tests.relays import LOAD, start_relays, stop_all
    from tests.serverproc import ServerProc

    bin_dir = _pg_binaries()
    if bin_dir is None:
        sys.exit("relays: needs PostgreSQL and nats-server: apt-get install postgresql nats-server")
    pg, nats = PostgresServer(bin_dir), NatsServer("nats-server")
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    try:
        pg.start()
        nats.start()
        url = pg.new_database()
        relays = start_relays(tmp / "srv", url, nats.url, 3)
        try:
            ports = [r.port for r in relays]
            results["latency"] = asyncio.run(latency(tmp, url, ports, 30 if quick else 300))
            lines = 50 if quick else 500
            results["fanout_lines_per_s"] = {"three_relays": asyncio.run(fanout(tmp, url, ports, lines, "f3")),
                                             "one_relay": asyncio.run(fanout(tmp, url, ports[:1], lines, "f1"))}
        finally:
            stop_all(relays)
        conns, per = 100, (5 if quick else 40)
        rates = {}
        for workers in (1, 2):
            url = pg.new_database()
            start_relays(tmp / "srv", url, nats.url, 0)  # migrates the new database; same home, same CA
            srv = ServerProc(tmp / "srv", "--db", url, "--bus", nats.url, *LOAD, "--workers", str(workers)).start()
            try:
                rates[workers] = asyncio.run(pipelined(tmp, url, srv.port, conns, per, f"w{workers}"))
            finally:
                srv.stop()
        results["workers"] = {"connections": conns, "in_flight_each": per, "one_msgs_per_s": rates[1],
                              "two_msgs_per_s": rates[2], "ratio": rates[2] / rates[1]}
    finally:
        nats.stop()
        pg.destroy()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages: proves the harness works")
    ap.add_argument("--json", type=Path, help="where to write the figures [benchmarks/results-relays.json]")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="securecomm-bench-") as tmp:
        r = run(Path(tmp), args.quick)
    lat = r["latency"]
    print(f"{'figure':52} {'same relay':>12} {'cross relay':>12}")
    for k in ("deliver_p50_ms", "deliver_p99_ms", "receipt_p50_ms", "receipt_p99_ms"):
        print(f"{'direct message ' + k.replace('_ms', ' (ms)').replace('_', ' '):52} "
              f"{lat['same_relay'][k]:12.2f} {lat['cross_relay'][k]:12.2f}")
    f = r["fanout_lines_per_s"]
    print(f"{'room of 9, lines/s until all have all':52} {f['one_relay']:12,.0f} {f['three_relays']:12,.0f}"
          "   (1 relay | 3 relays)")
    w = r["workers"]
    print(f"{'100 connections pipelining DIRECT (msg/s)':52} {w['one_msgs_per_s']:12,.0f} {w['two_msgs_per_s']:12,.0f}"
          f"   (--workers 1 | 2) ratio {w['ratio']:.2f}, target >= 1.6")
    print(f"wrote {write_json('relays', r, args.json)}")


if __name__ == "__main__":
    main()
