"""Handshake flood: a good client's send latency while another process makes 100 TLS handshakes/s.

Run: python benchmarks/handshake_flood.py [--quick] [--json FILE]   (also step 8 of run.py)

Three phases against one server, in one run, alternating in 1.5 s slices
(3 rounds with --quick, 10 without) so a busy moment hits all three alike:
  baseline   no flood: the good client sends sequentially (send -> receipt)
  handshakes a second process opens FLOOD_RATE connections/s, each a full TLS 1.3
             handshake (X25519, certificate verified, no resumption) plus HELLO ->
             SERVER_HELLO, so the server has really finished every handshake
  ffdhe8192  the same rate of ClientHellos asking only for ffdhe8192 (the issue-9
             attack: ~95 ms of server CPU each before key exchange was X25519 only)
For each: the good client's p50/p99 send latency, and the server's CPU time per
flood connection (from /proc, utime+stime). Bounded: FLOOD_RATE x seconds
connections at most, and the flooder stops at its deadline whatever it achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOOD_RATE = 100  # connections per second, as issue 9 asks
CONNECT_TIMEOUT = 5.0


# -- the flooder (a child process) --------------------------------------------------------------
def _one_connection(ctx: ssl.SSLContext, port: int, hello: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(hello)
            return bool(conn.recv(4096))  # SERVER_HELLO: the server finished its side too
    except (OSError, ssl.SSLError):
        return False


def flood(port: int, cafile: str, seconds: float, group: str | None, rate: float = FLOOD_RATE) -> dict[str, Any]:
    """`rate` connections per second, paced, for `seconds`; never more than rate x seconds."""
    from securecomm.wire import protocol as P

    ctx = ssl.create_default_context(cafile=cafile)
    if group:
        ctx.set_ecdh_curve(group)
    hello = P.encode_event(P.Hello())
    print("ready", flush=True)  # imports done: the parent starts its clock now
    total = int(rate * seconds)
    ok = done = 0
    start = time.monotonic()
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif time.monotonic() - start > seconds:
            break  # behind schedule at the deadline: stop, do not burst
        ok += _one_connection(ctx, port, hello)
        done += 1
    elapsed = time.monotonic() - start
    return {"attempted": done, "completed": ok, "per_s": done / elapsed, "seconds": elapsed}


# -- the measuring side ---------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


MAX_SENDS = 50_000  # per phase; ~1 ms each, so the time bound ends a phase first


async def _sends(client: Any, seal: Callable[[], bytes], seconds: float) -> list[float]:
    """Sequential send -> receipt; each envelope sealed (fresh id) before its clock starts."""
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    for _ in range(MAX_SENDS):
        if time.monotonic() > deadline:
            break
        env = seal()
        t0 = time.perf_counter()
        await client.submit(env)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


async def _start_flood(port: int, cafile: str, seconds: float, group: str | None,
                       rate: float = FLOOD_RATE) -> asyncio.subprocess.Process:
    """Start the flooder and wait until it is about to connect (its imports done)."""
    args = [sys.executable, __file__, "--child", str(port), cafile, str(seconds), group or "", str(rate)]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 60)  # "ready"
    return proc


async def _flood_result(proc: asyncio.subprocess.Process, seconds: float) -> dict[str, Any]:
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    return dict(json.loads(out))


async def _phase(client: Any, seal: Callable[[], bytes], server_pid: int, port: int, cafile: str,
                 seconds: float, group: str | None, with_flood: bool) -> tuple[list[float], float, dict[str, Any]]:
    """One slice of one phase: (latency samples, server CPU seconds, flooder's counts)."""
    proc = await _start_flood(port, cafile, seconds, group) if with_flood else None
    cpu0 = cpu_seconds(server_pid)
    samples = await _sends(client, seal, seconds)
    fl = await _flood_result(proc, seconds) if proc is not None else {"attempted": 0, "completed": 0, "seconds": 0}
    return samples, cpu_seconds(server_pid) - cpu0, fl


PHASES = {"baseline": (None, False), "handshakes": (None, True), "ffdhe8192": ("ffdhe8192", True)}


async def measure(client: Any, seal: Callable[[], bytes], server_pid: int, port: int, cafile: str,
                  quick: bool) -> dict[str, Any]:
    """The three phases on one connected, logged-in client; see the module docstring.

    The phases alternate in short slices (rounds), so that a busy moment on a
    shared machine hits all three alike rather than one of them.
    """
    rounds, seconds = (3, 1.5) if quick else (10, 1.5)
    acc: dict[str, dict[str, Any]] = {n: {"samples": [], "cpu": 0.0, "attempted": 0, "completed": 0, "s": 0.0}
                                      for n in PHASES}
    for _ in range(rounds):
        for name, (group, with_flood) in PHASES.items():
            samples, cpu, fl = await _phase(client, seal, server_pid, port, cafile, seconds, group, with_flood)
            a = acc[name]
            a["samples"] += samples
            a["cpu"] += cpu
            a["attempted"] += fl["attempted"]
            a["completed"] += fl["completed"]
            a["s"] += fl["seconds"]
    out: dict[str, Any] = {"rate_per_s": FLOOD_RATE, "rounds": rounds, "seconds_per_slice": seconds}
    base = acc["baseline"]
    base_cpu_per_send = base["cpu"] / max(1, len(base["samples"]))
    for name, a in acc.items():
        out[name] = {"sends": len(a["samples"]), "p50_ms": statistics.median(a["samples"]),
                     "p99_ms": _pct(a["samples"], 0.99), "server_cpu_s": a["cpu"],
                     "flood_attempted": a["attempted"], "flood_completed": a["completed"],
                     "flood_per_s": a["attempted"] / a["s"] if a["s"] else 0.0}
        # the good client's own sends cost the server CPU too: subtract the baseline's per-send cost
        extra = a["cpu"] - base_cpu_per_send * len(a["samples"])
        out[name]["server_cpu_ms_per_connection"] = max(0.0, extra) * 1e3 / max(1, a["attempted"])
    return out


async def ffdhe_on_openssl_defaults(echo_pid: int, echo_port: int, cafile: str) -> dict[str, Any]:
    """The attack's cost where nothing restricts groups: a bare asyncio TLS server on
    OpenSSL's defaults (benchmarks/tls_echo.py). Few connections: each costs ~0.1 s."""
    cpu0 = cpu_seconds(echo_pid)
    proc = await _start_flood(echo_port, cafile, 2.0, "ffdhe8192", rate=10)
    fl = await _flood_result(proc, 60)
    cpu = cpu_seconds(echo_pid) - cpu0
    return {**fl, "server_cpu_ms_per_connection": cpu * 1e3 / max(1, fl["attempted"])}


def row(r: dict[str, Any]) -> tuple[str, str, str, str]:
    b, h, f = r["baseline"], r["handshakes"], r["ffdhe8192"]
    return ("8 send under handshake flood",
            f"p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms at {h['flood_per_s']:.0f} handshakes/s "
            f"({h['server_cpu_ms_per_connection']:.1f} ms server CPU each)",
            f"no flood: p50 {b['p50_ms']:.2f}, p99 {b['p99_ms']:.2f} ms; ffdhe8192 hellos (refused): "
            f"p99 {f['p99_ms']:.2f} ms, {f['server_cpu_ms_per_connection']:.1f} ms CPU each "
            f"(OpenSSL defaults: {r['ffdhe8192_openssl_defaults']['server_cpu_ms_per_connection']:.0f} ms each)",
            "measured (issue 9)")


def standalone(quick: bool) -> dict[str, Any]:
    import tempfile

    from benchmarks import harness as H
    from securecomm.client.login import connect_profile
    from securecomm.crypto import envelope
    from securecomm.crypto import identity as ident
    from securecomm.paths import Paths

    with tempfile.TemporaryDirectory(prefix="securecomm-flood-") as tmp:
        srv_home, cli_home = Path(tmp) / "srv", Path(tmp) / "alice"
        H.securecomm(srv_home, "certgen")
        # one flooding address: the per-address limit would measure drops, not handshakes
        server = H.start_server(srv_home, "--rate", "0", "--max-unauthenticated-per-address", "512")
        try:
            pw = (H.PASSWORD + "\n").encode()
            H.securecomm(srv_home, "user", "add", "alice", "--password-stdin", input=pw)
            cafile = str(srv_home / "tls" / "ca.pem")
            H.securecomm(cli_home, "user", "login", "alice", "--server", f"localhost:{server.port}", "--ca", cafile,
                         "--password-stdin", input=pw)
            paths = Paths.resolve(cli_home)
            me = ident.load(paths.identity_key("default"))
            server_id = ident.load_public(srv_home / "server" / "identity.pub")

            def seal() -> bytes:
                return envelope.seal(bytes(1024), me, server_id)

            async def go() -> dict[str, Any]:
                client, _ = await connect_profile(paths, me)
                async with client:
                    return await measure(client, seal, server.pid, server.port, cafile, quick)

            r = asyncio.run(go())
            echo = H.start_echo(srv_home)
            try:
                r["ffdhe8192_openssl_defaults"] = asyncio.run(ffdhe_on_openssl_defaults(echo.pid, echo.port, cafile))
            finally:
                echo.stop()
            return r
        finally:
            server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        port, cafile, seconds, group, rate = sys.argv[2:7]
        print(json.dumps(flood(int(port), cafile, float(seconds), group or None, float(rate))), flush=True)
        return
    from benchmarks.common import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = standalone(args.quick)
    a, b, c, _ = row(r)
    print(f"{a}: {b}\n  baseline: {c}")
    print("wrote", write_json("handshake_flood", {"quick": args.quick, **r}, args.json))


if __name__ == "__main__":
    main()
