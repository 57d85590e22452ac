"""Several relays over one PostgreSQL and one NATS (issue 13): same run, same machine, baselines beside.

Run: python benchmarks/relays.py [--quick] [--json FILE]

Private PostgreSQL and nats-server (tests/cluster.py), real `securecomm serve --db URL --bus URL`
relays, in-process clients over real TLS (tests/relays.py: accounts written straight into the store).

1. Direct message latency, one at a time: SEND -> the recipient's DELIVER, and -> the sender's
   receipt, with the recipient on another relay vs on the same relay. Target: cross-relay p50 < 3 ms.
2. Room fan-out: one member sends lines to a room of nine, three per relay on three relays vs all
   nine on one relay; the time until every member has every line.
3. `--workers 2` vs `--workers 1`: 100 connections pipelining direct messages (to offline users, so
   each is one durable commit and a receipt). Target: at least 1.6x. Made fair and repeatable:
   - the load comes from LOAD_PROCS separate processes (each its own connections and event loop),
     so the load generator is not one Python core the relay's second worker waits for;
   - `--workers 1` and `--workers 2` rounds alternate (ROUNDS each; medians reported), each on a new
     database, after the connections are made and the envelopes sealed (only the sending is timed);
   - reported with it: how many connections each worker holds (SO_REUSEPORT spreads them by a hash:
     an uneven split caps the speed-up), the relay's CPU time per message per worker (from
     /proc), and the load generator's CPU time per message, so a busy shared machine shows as such.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
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


async def latency(tmp: Path, url: str, ports: list[int], n: int, pids: list[int] | None = None) -> dict[str, Any]:
    """Sender on ports[0]; one recipient there, one on ports[1], messages to them alternated (so a busy
    moment on the shared machine hits both). With the relays' `pids`: their CPU time per message too
    (all relays together, spent while that kind of message was in flight)."""
    group = await _group(tmp, url, [ports[0], ports[1], ports[0]], 3, "lat")
    sender, remote, local = group
    kinds = {"same_relay": local, "cross_relay": remote}
    deliver: dict[str, list[float]] = {name: [] for name in kinds}
    receipt: dict[str, list[float]] = {name: [] for name in kinds}
    cpu = dict.fromkeys(kinds, 0.0)
    try:
        for k in range(n + 1):  # the first of each warms caches and connections, and is not counted
            for name, to in kinds.items():
                sealed, msg_id = sender.seal(to.me.public, b"x" * 64)
                cpu0 = sum(_cpu_seconds(p) for p in pids or [])
                t0, got = time.perf_counter(), []
                sent = asyncio.create_task(sender.send_direct(to.name, sealed, msg_id))
                sent.add_done_callback(lambda _, got=got: got.append(time.perf_counter()))
                await to.until(lambda to=to, msg_id=msg_id: msg_id in to.delivered)
                t_deliver = time.perf_counter()
                await sent
                if k:
                    receipt[name].append((got[0] - t0) * 1000)
                    deliver[name].append((t_deliver - t0) * 1000)
                    cpu[name] += sum(_cpu_seconds(p) for p in pids or []) - cpu0
    finally:
        await asyncio.gather(*(p.close() for p in group))
    out: dict[str, Any] = {}
    for name in kinds:
        d, r = deliver[name], receipt[name]
        out[name] = {"deliver_p50_ms": statistics.median(d), "deliver_p99_ms": _pct(d, 0.99),
                     "receipt_p50_ms": statistics.median(r), "receipt_p99_ms": _pct(r, 0.99)}
        if pids:
            out[name]["relays_cpu_ms_per_msg"] = 1000 * cpu[name] / n
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


#: Processes the `--workers` load comes from, and alternated rounds per worker count.
LOAD_PROCS = 2
ROUNDS = 3
#: Cores other programs may keep busy during a round before the workers figure is flagged as unfair.
BUSY_WARNING = 0.25


def _load_child(tmp: str, url: str, port: int, prefix: str, conns: int, per: int, sink: str, sink_line: str,
                ready: Any, go: Any, out: Any) -> None:
    """One load process: `conns` connections, each with `per` direct messages in flight to `sink`."""
    from securecomm.crypto.identity import PublicIdentity

    async def main() -> None:
        group = await _group(Path(tmp), url, [port], conns, prefix)
        to = PublicIdentity.from_line(sink_line)
        sealed = {p.name: [p.seal(to, b"z" * 256) for _ in range(per)] for p in group}
        try:
            ready.set()
            await asyncio.to_thread(go.wait)
            t0, cpu0 = time.monotonic(), time.process_time()  # CLOCK_MONOTONIC: comparable across processes
            await asyncio.gather(*(p.send_direct(sink, env, m) for p in group for env, m in sealed[p.name]))
            out.put((conns * per, t0, time.monotonic(), time.process_time() - cpu0))
        finally:
            await asyncio.gather(*(p.close() for p in group))

    asyncio.run(main())


def _worker_pids(pid: int) -> list[int]:
    """The relay processes of a `serve`: its children with --workers N > 1, else itself."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [int(c) for c in children] or [pid]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (PostgreSQL: the postmaster and its backends)."""
    total = 0.0
    for p in {pid, *_worker_pids(pid)}:
        with contextlib.suppress(OSError):  # ended meanwhile
            total += _cpu_seconds(p)
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz


def _connections(pid: int, port: int) -> int:
    """Established TCP connections on `port` that process `pid` holds (from /proc/net/tcp and its fds)."""
    mine = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rpartition(":")[2], 16) == port and cols[3] == "01" and cols[9] in mine:
                n += 1
    return n


def pipelined_round(tmp: Path, url: str, port: int, server_pid: int, pg_pid: int, conns: int, per: int,
                    prefix: str) -> dict[str, Any]:
    """conns connections over LOAD_PROCS processes, `per` direct messages in flight each, to an offline
    user: messages/s, and where the work went."""
    from tests.relays import make_users

    sink = f"{prefix}sink"
    sink_line = make_users(url, [sink])[sink].public.line
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs, readies = [], []
    for i in range(LOAD_PROCS):
        ready = ctx.Event()
        share = conns // LOAD_PROCS + (1 if i < conns % LOAD_PROCS else 0)
        procs.append(ctx.Process(target=_load_child, args=(str(tmp), url, port, f"{prefix}p{i}", share, per,
                                                           sink, sink_line, ready, go, out)))
        readies.append(ready)
    for proc in procs:
        proc.start()
    try:
        for ready in readies:
            if not ready.wait(120):
                raise RuntimeError("a load process did not connect in time")
        workers = _worker_pids(server_pid)
        held = {pid: _connections(pid, port) for pid in workers}
        cpu0 = {pid: _cpu_seconds(pid) for pid in workers}
        pg0, busy0 = _tree_cpu(pg_pid), _machine_busy()
        go.set()
        parts = [out.get(timeout=300) for _ in procs]
        cpu = {pid: _cpu_seconds(pid) - cpu0[pid] for pid in workers}
        pg_cpu, busy1 = _tree_cpu(pg_pid) - pg0, _machine_busy()
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
    total = sum(p[0] for p in parts)
    elapsed = max(p[2] for p in parts) - min(p[1] for p in parts)
    busy = busy1[0] - busy0[0]
    ours = sum(cpu.values()) + pg_cpu + sum(p[3] for p in parts)
    return {"msgs_per_s": total / elapsed, "messages": total,
            "connections_per_worker": sorted(held.values(), reverse=True),
            "relay_cpu_ms_per_msg": 1000 * sum(cpu.values()) / total,
            "relay_cpu_share_per_worker": sorted((round(c / max(sum(cpu.values()), 1e-9), 2) for c in cpu.values()),
                                                 reverse=True),
            "load_cpu_ms_per_msg": 1000 * sum(p[3] for p in parts) / total,
            "postgres_cpu_ms_per_msg": 1000 * pg_cpu / total,
            # cores in use while timed: all of the machine, and what was neither relay, PostgreSQL nor load
            "machine_busy_cores": busy / elapsed, "others_busy_cores": max(0.0, busy - ours) / elapsed}


class _Skip(Exception):
    """--only: the figures after this point (latency) or before it (workers) are not run."""


def workers_figure(tmp: Path, pg: Any, nats: Any, conns: int, per: int, rounds: int) -> dict[str, Any]:
    """`--workers 1` and `--workers 2`, alternated, `rounds` each; medians and every round."""
    from tests.relays import LOAD, start_relays
    from tests.serverproc import ServerProc

    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
    for r in range(rounds):
        for workers in (1, 2):
            url = pg.new_database()
            start_relays(tmp / "srv", url, nats.url, 0)  # migrates the new database; same home, same CA
            srv = ServerProc(tmp / "srv", "--db", url, "--bus", nats.url, *LOAD, "--workers", str(workers)).start()
            try:
                assert srv.proc is not None
                runs[workers].append(pipelined_round(tmp, url, srv.port, srv.proc.pid, pg_pid, conns, per,
                                                     f"w{workers}r{r}"))
            finally:
                srv.stop()
    one = statistics.median(x["msgs_per_s"] for x in runs[1])
    two = statistics.median(x["msgs_per_s"] for x in runs[2])
    return {"connections": conns, "in_flight_each": per, "load_processes": LOAD_PROCS, "rounds": rounds,
            "one_msgs_per_s": one, "two_msgs_per_s": two, "ratio": two / one,
            "ratios_per_round": [b["msgs_per_s"] / a["msgs_per_s"] for a, b in zip(runs[1], runs[2], strict=True)],
            "one": runs[1], "two": runs[2]}


def run(tmp: Path, quick: bool, only: str | None = None) -> dict[str, Any]:
    from tests.cluster import NatsServer, PostgresServer, _pg_binaries
    from tests.relays import start_relays, stop_all

    bin_dir = _pg_binaries()
    if bin_dir is None:
        sys.exit("relays: needs PostgreSQL and nats-server: apt-get install postgresql nats-server")
    pg, nats = PostgresServer(bin_dir), NatsServer("nats-server")
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    try:
        pg.start()
        nats.start()
        url = pg.new_database()
        relays = start_relays(tmp / "srv", url, nats.url, 0 if only == "workers" else 3)
        try:
            if only == "workers":
                raise _Skip
            ports = [r.port for r in relays]
            pids = [r.proc.pid for r in relays if r.proc is not None]
            results["latency"] = asyncio.run(latency(tmp, url, ports, 100 if quick else 300, pids))
            if only == "latency":
                raise _Skip
            lines = 50 if quick else 500
            results["fanout_lines_per_s"] = {"three_relays": asyncio.run(fanout(tmp, url, ports, lines, "f3")),
                                             "one_relay": asyncio.run(fanout(tmp, url, ports[:1], lines, "f1"))}
        except _Skip:
            pass
        finally:
            stop_all(relays)
        if only != "latency":
            results["workers"] = workers_figure(tmp, pg, nats, 100, 20 if quick else 40, 2 if quick else ROUNDS)
    finally:
        nats.stop()
        pg.destroy()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages: proves the harness works")
    ap.add_argument("--json", type=Path, help="where to write the figures [benchmarks/results-relays.json]")
    ap.add_argument("--only", choices=["latency", "workers"],
                    help="only figure 1 (direct message latency) or 3 (--workers 2 vs 1), e.g. on a quiet machine")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="securecomm-bench-") as tmp:
        r = run(Path(tmp), args.quick, args.only)
    if args.only == "workers":
        _print_workers(r["workers"])
        print(f"wrote {write_json('relays-workers', r, args.json)}")
        return
    lat = r["latency"]
    print(f"{'figure':52} {'same relay':>12} {'cross relay':>12}")
    for k in ("deliver_p50_ms", "deliver_p99_ms", "receipt_p50_ms", "receipt_p99_ms", "relays_cpu_ms_per_msg"):
        label = "relays' CPU per message (ms)" if k == "relays_cpu_ms_per_msg" else \
            "direct message " + k.replace("_ms", " (ms)").replace("_", " ")
        print(f"{label:52} "
              f"{lat['same_relay'][k]:12.2f} {lat['cross_relay'][k]:12.2f}")
    if args.only == "latency":
        print(f"wrote {write_json('relays-latency', r, args.json)}")
        return
    f = r["fanout_lines_per_s"]
    print(f"{'room of 9, lines/s until all have all':52} {f['one_relay']:12,.0f} {f['three_relays']:12,.0f}"
          "   (1 relay | 3 relays)")
    _print_workers(r["workers"])
    print(f"wrote {write_json('relays', r, args.json)}")


def _print_workers(w: dict[str, Any]) -> None:
    print(f"{'100 connections pipelining DIRECT (msg/s, median)':52} {w['one_msgs_per_s']:12,.0f} "
          f"{w['two_msgs_per_s']:12,.0f}   (--workers 1 | 2) ratio {w['ratio']:.2f}, target >= 1.6")
    print(f"  ratio per alternated round: {', '.join(f'{x:.2f}' for x in w['ratios_per_round'])}")
    busiest = max(x["others_busy_cores"] for x in w["one"] + w["two"])
    if busiest > BUSY_WARNING:
        print(f"  warning: other programs kept up to {busiest:.2f} cores busy during a round: on 2 cores the "
              "ratio is not the relay's; re-run on a quiet machine (python benchmarks/relays.py --only workers)")
    for label, runs in (("--workers 1", w["one"]), ("--workers 2", w["two"])):
        for x in runs:
            print(f"  {label}: {x['msgs_per_s']:7,.0f} msg/s; connections per worker {x['connections_per_worker']}; "
                  f"relay CPU {x['relay_cpu_ms_per_msg']:.3f} ms/msg split {x['relay_cpu_share_per_worker']}, "
                  f"PostgreSQL {x['postgres_cpu_ms_per_msg']:.3f}, load generator {x['load_cpu_ms_per_msg']:.3f} "
                  f"ms/msg; machine busy {x['machine_busy_cores']:.2f} cores, others {x['others_busy_cores']:.2f}")


if __name__ == "__main__":
    main()
