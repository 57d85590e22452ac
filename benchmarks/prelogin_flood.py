"""Issue 9: a flood of connections that never log in, against a logged-in client and a new login.

Run: python benchmarks/prelogin_flood.py [--quick] [--json FILE]

The flood: 300 connections that never log in (100 raw TCP, 100 TLS + HELLO,
100 TLS silent) and 50 that send a 1 MiB frame header and most of its
payload, from four loopback addresses (127.0.0.2-5); the measured client is
on 127.0.0.1. Baseline, same run: the same measurements with no flood.
Reported: median send->receipt and connect+key-login latency, and the
server's RSS before, while the flood is held, and after it has gone.
Targets (issue 9): both latencies under 1 s, RSS growth under 20 MiB.
Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness as H
from benchmarks.common import write_json
from securecomm.cli.context import State
from securecomm.client.login import connect_profile
from securecomm.crypto import identity as ident
from securecomm.server.memory import TRIM_DELAY
from securecomm.wire import protocol as P

MIB = 1024 * 1024
#: Per-address limit the server runs with here (the default, 256, would admit the whole flood).
PER_ADDRESS = 48


class Flood:
    def __init__(self, port: int, ca: Path) -> None:
        self.port, self.ctx = port, ssl.create_default_context(cafile=str(ca))
        self.socks: list[socket.socket] = []
        self.refused = 0

    def _tcp(self, source: str) -> socket.socket:
        s = socket.socket()
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        return s

    def _open(self, source: str, tls: bool, first: bytes = b"") -> None:
        try:
            s = self._tcp(source)
            if tls:
                s = self.ctx.wrap_socket(s, server_hostname="localhost")
            self.socks.append(s)
            if first:
                s.sendall(first)
        except (OSError, ssl.SSLError):
            self.refused += 1

    def start(self) -> None:
        hello = P.encode_event(P.Hello())
        for _ in range(100):
            self._open("127.0.0.2", tls=False)
        for _ in range(100):
            self._open("127.0.0.3", tls=True, first=hello)
        for _ in range(100):
            self._open("127.0.0.4", tls=True)
        for _ in range(50):
            self._open("127.0.0.5", tls=True, first=hello + struct.pack(">I", MIB) + b"\x10" + b"x" * (MIB - 4096))

    def close(self) -> None:
        for s in self.socks:
            s.close()


async def latencies(home: Path, rounds: int) -> tuple[list[float], list[float]]:
    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, _ = await connect_profile(state.paths, me)
    sends, logins = [], []
    async with client:
        for i in range(rounds):
            t0 = time.perf_counter()
            await client.send_message(f"probe {i}".encode(), me)
            sends.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fresh, _ = await connect_profile(state.paths, me)
            logins.append(time.perf_counter() - t0)
            await fresh.close()
    return sends, logins


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def run(quick: bool, tmp: Path) -> dict[str, Any]:
    H.raise_fd_limit()
    srv_home, home = tmp / "srv", tmp / "alice"
    H.securecomm(srv_home, "certgen")
    server = H.start_server(srv_home, "--max-unauthenticated-per-address", str(PER_ADDRESS))
    try:
        H.securecomm(srv_home, "user", "add", "alice", "--password-stdin", input=(H.PASSWORD + "\n").encode())
        H.securecomm(home, "user", "login", "alice", "--server", f"localhost:{server.port}", "--ca",
                     str(srv_home / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
        rounds = 5 if quick else 30
        base_sends, base_logins = asyncio.run(latencies(home, rounds))  # also warms every code path
        before = H.rss_kib(server.pid)
        flood = Flood(server.port, srv_home / "tls" / "ca.pem")
        t0 = time.perf_counter()
        flood.start()
        flood_s = time.perf_counter() - t0
        held = H.rss_kib(server.pid)
        try:
            sends, logins = asyncio.run(latencies(home, rounds))
        finally:
            flood.close()
        time.sleep(TRIM_DELAY + 2.0)  # the server notices the closes, then trims (server/memory.py)
        after = H.rss_kib(server.pid)
        with contextlib.suppress(Exception):
            asyncio.run(latencies(home, 1))
    finally:
        server.stop()
    return {"quick": quick, "rounds": rounds, "per_address_limit": PER_ADDRESS, "flood_open_s": flood_s,
            "flood_sockets_refused_or_cut": flood.refused,
            "baseline_send_ms": ms(base_sends), "baseline_login_ms": ms(base_logins),
            "flood_send_ms": ms(sends), "flood_login_ms": ms(logins),
            "rss_before_kib": before, "rss_held_kib": held, "rss_after_kib": after,
            "rss_growth_held_mib": (held - before) / 1024, "rss_growth_after_mib": (after - before) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 probes instead of 30")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args.quick, Path(tmp))
    rows = [
        ("send -> receipt, logged-in client", f"{r['flood_send_ms']:.1f} ms", f"{r['baseline_send_ms']:.1f} ms",
         "< 1000 ms"),
        ("connect + key login", f"{r['flood_login_ms']:.1f} ms", f"{r['baseline_login_ms']:.1f} ms", "< 1000 ms"),
        ("server RSS growth, flood held", f"{r['rss_growth_held_mib']:.1f} MiB",
         f"{r['rss_before_kib'] / 1024:.0f} MiB before", "< 20 MiB"),
        ("server RSS growth, flood gone", f"{r['rss_growth_after_mib']:.1f} MiB", "", "< 20 MiB"),
    ]
    print("| figure (median) | under the 300+50 flood | baseline, no flood | target |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("wrote", write_json("prelogin_flood", r, args.json))


if __name__ == "__main__":
    main()
