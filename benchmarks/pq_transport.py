"""Post-quantum TLS transport (issue 14) against stdlib ssl, both measured in the same run.

Run: python benchmarks/pq_transport.py [--quick] [--json FILE]

Three figures, each for two echo servers (benchmarks/tls_echo.py in a subprocess)
and a client in this process on the same transport:
  stdlib  Python's ssl (OpenSSL 3.0, X25519), with the real server's 32 KiB read buffer
  pq      net/pqtls.py on pyOpenSSL (OpenSSL from cryptography's wheel), X25519MLKEM768
1. echo: pipelined 1 KiB frames, written in batches of 64, read back; frames/s.
2. handshakes: full TLS 1.3 handshakes (certificate verified, no resumption)
   per second at concurrency 16, plus the server's CPU per handshake (from
   /proc, utime+stime). A third column, pq-x25519, is the pq transport with the
   client offering X25519 only: the difference to pq is what ML-KEM costs.
3. idle memory: the server's RSS growth per held connection (handshake done, idle).
Rounds alternate the transports so a busy moment on a shared machine hits all alike;
medians are reported. Targets: echo >= 80% and handshakes >= 70% of stdlib, idle < 100 KiB.
Bounded: every loop has a fixed count; each connection has a 30 s deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness as H
from benchmarks.common import write_json

CONCURRENCY = 16
FRAME = 1024
DEADLINE = 30.0
Opener = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def openers(tls: Path) -> dict[str, Opener]:
    """How the client connects on each transport (contexts built once, as the real client caches them)."""
    from securecomm.net import pqcontext, pqtls

    std = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    std.set_ecdh_curve("X25519")
    ca = (tls / "ca.pem").read_bytes()
    pq, pq_classical = pqcontext.client_context(ca), pqcontext.client_context(ca, groups="X25519")

    async def stdlib(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, ssl=std, server_hostname="localhost")

    def pq_opener(ctx: Any) -> Opener:
        async def one(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await pqtls.open_connection("127.0.0.1", port, ctx, server_hostname="localhost")
        return one

    return {"stdlib": stdlib, "pq": pq_opener(pq), "pq-x25519": pq_opener(pq_classical)}


async def echo_rate(open_one: Opener, port: int, n: int) -> float:
    from securecomm.wire.frames import FrameDecoder, encode_frame

    reader, writer = await open_one(port)
    frame = encode_frame(os.urandom(FRAME))

    async def send() -> None:
        for i in range(0, n, 64):
            writer.write(frame * min(64, n - i))
            await writer.drain()

    t0 = time.perf_counter()
    sender = asyncio.create_task(send())
    got, dec = 0, FrameDecoder()
    while got < n:
        dec.receive_data(await asyncio.wait_for(reader.read(1 << 16), DEADLINE))
        while dec.next_frame() is not None:
            got += 1
    elapsed = time.perf_counter() - t0
    await sender
    writer.close()
    return n / elapsed


async def handshake_rate(open_one: Opener, port: int, pid: int, n: int) -> tuple[float, float]:
    """(handshakes/s, server CPU ms per handshake)."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with sem:
            _, w = await asyncio.wait_for(open_one(port), DEADLINE)
            w.close()

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - t0
    return n / elapsed, (cpu_seconds(pid) - cpu0) / n * 1e3


async def idle_memory(open_one: Opener, port: int, pid: int, n: int) -> float:
    """KiB of server RSS per held, idle connection."""
    held: list[asyncio.StreamWriter] = []
    before = H.rss_kib(pid)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.wait_for(open_one(port), DEADLINE)
            writer.write(b"x")  # a round trip: the server has finished its side of the handshake
            await asyncio.wait_for(reader.readexactly(1), DEADLINE)
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    after = H.rss_kib(pid)
    for w in held:
        w.close()
    return (after - before) / n


async def measure(quick: bool, home: Path) -> dict[str, Any]:
    tls = home / "tls"
    ways = openers(tls)
    servers = {"stdlib": _echo(tls, "stdlib-small"), "pq": _echo(tls, "pq")}
    rounds = 3 if quick else 5
    frames, shakes, held = (5000, 300, 300) if quick else (30000, 1000, 1000)
    samples: dict[str, dict[str, list[float]]] = {k: {"echo": [], "hs": [], "cpu": []} for k in ways}
    try:
        for _ in range(rounds):
            for way, open_one in ways.items():
                srv = servers["stdlib" if way == "stdlib" else "pq"]
                if way != "pq-x25519":
                    samples[way]["echo"].append(await echo_rate(open_one, srv.port, frames))
                rate, cpu = await handshake_rate(open_one, srv.port, srv.pid, shakes)
                samples[way]["hs"].append(rate)
                samples[way]["cpu"].append(cpu)
    finally:
        for srv in servers.values():
            srv.stop()
    # Fresh servers: memory freed by earlier rounds would be reused and hide what a connection holds.
    memory = {way: await _memory(tls, way, ways[way], held) for way in ("stdlib", "pq")}
    med = {way: {k: statistics.median(v) for k, v in s.items() if v} for way, s in samples.items()}
    return {"rounds": rounds, "frames": frames, "frame_bytes": FRAME, "handshakes": shakes,
            "concurrency": CONCURRENCY, "held": held, "median": med, "idle_kib_per_connection": memory,
            "echo_ratio": med["pq"]["echo"] / med["stdlib"]["echo"],
            "handshake_ratio": med["pq"]["hs"] / med["stdlib"]["hs"],
            "mlkem_server_cpu_ms": med["pq"]["cpu"] - med["pq-x25519"]["cpu"]}


async def _memory(tls: Path, way: str, open_one: Opener, n: int) -> float:
    srv = _echo(tls, "stdlib-small" if way == "stdlib" else "pq")
    try:
        return await idle_memory(open_one, srv.port, srv.pid, n)
    finally:
        srv.stop()


def _echo(tls: Path, mode: str) -> H.Proc:
    here = Path(__file__).resolve().parent
    return H.Proc([sys.executable, str(here / "tls_echo.py"), str(tls / "server.pem"), str(tls / "server.key"), mode],
                  r"^(\d+)$", stream="stdout").start()


def table(r: dict[str, Any]) -> str:
    m, mem = r["median"], r["idle_kib_per_connection"]
    rows = [
        ("echo, pipelined 1 KiB frames", f"{m['pq']['echo']:,.0f} frames/s ({r['echo_ratio']:.0%})",
         f"{m['stdlib']['echo']:,.0f} frames/s", ">= 80%"),
        (f"full handshakes/s (x{CONCURRENCY})", f"{m['pq']['hs']:,.0f}/s ({r['handshake_ratio']:.0%})",
         f"{m['stdlib']['hs']:,.0f}/s", ">= 70%"),
        ("server CPU per handshake", f"{m['pq']['cpu']:.2f} ms (X25519 only on pq: {m['pq-x25519']['cpu']:.2f} ms)",
         f"{m['stdlib']['cpu']:.2f} ms", "-"),
        ("idle memory per held connection", f"{mem['pq']:.0f} KiB", f"{mem['stdlib']:.0f} KiB", "< 100 KiB"),
    ]
    lines = ["| figure | pq transport (X25519MLKEM768) | stdlib ssl (X25519), same run | target |", "|---|---|---|---|"]
    return "\n".join([*lines, *(f"| {' | '.join(row)} |" for row in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small counts; well under a minute")
    ap.add_argument("--json", type=Path, help="where to write the JSON (default benchmarks/results-pq_transport.json)")
    args = ap.parse_args()
    H.raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        H.securecomm(home, "certgen")
        results = asyncio.run(measure(args.quick, home))
    results["quick"] = args.quick
    print(table(results))
    print(f"ML-KEM-768 adds {results['mlkem_server_cpu_ms']:.2f} ms of server CPU per handshake")
    print("JSON:", write_json("pq_transport", results, args.json))


if __name__ == "__main__":
    main()
