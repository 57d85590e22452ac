"""Chat after a planned server restart (SIGTERM), with this code's backoff cap vs the old 30 s cap
(baseline), in alternating rounds of one run:

- rejoin: seconds from the server listening again to chat having rejoined its room; it depends
  on where the restart falls between two attempts, so one round says little;
- longest gap between two connection attempts during the outage: the worst case of the above,
  which is what the cap bounds.

Run: python benchmarks/chat_reconnect.py [--rounds N] [--down S] [--quick] [--json FILE]
Target (issue 10, item 2): chat is back within a few seconds of the server, whatever the outage.
Every wait is bounded (REJOIN_TIMEOUT); the outage is a fixed, bounded sleep: it is the condition
under test, not a wait for an event.
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
from benchmarks.common import entry_point, write_json
from securecomm.cli.context import State
from securecomm.client import chat as chatsession
from securecomm.client.chat import ChatSession, Info
from securecomm.client.events import Alert
from securecomm.crypto import identity as ident

OLD_CAP = 30.0  # the backoff cap before issue 10
REJOIN_TIMEOUT = 120.0


def setup(tmp: Path) -> tuple[H.Proc, State, Any]:
    srv, cli = tmp / "srv", tmp / "alice"
    H.securecomm(srv, "certgen")
    server = H.start_server(srv)
    H.securecomm(srv, "user", "add", "alice", "--password-stdin", input=(H.PASSWORD + "\n").encode())
    H.securecomm(cli, "user", "login", "alice", "--server", f"localhost:{server.port}", "--ca",
                 str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
    # restarts reuse the port, as an operator's restart does
    server.cmd = [entry_point(), "--home", str(srv), "serve", "--port", str(server.port)]
    state = State(home=str(cli))
    return server, state, ident.load(state.paths.identity_key("default"))


async def one_round(server: H.Proc, state: State, me: Any, cap: float, down: float) -> tuple[float, float]:
    """(rejoin seconds, longest gap between attempts) for one restart."""
    chatsession.BACKOFF_MAX = cap
    joined = asyncio.Event()
    attempts: list[float] = []

    def emit(ev: Any) -> None:
        if isinstance(ev, Info) and ev.text.startswith("joined #"):
            joined.set()
        elif isinstance(ev, Alert) and ev.text.startswith("cannot connect"):
            attempts.append(time.monotonic())

    lines: asyncio.Queue[str | None] = asyncio.Queue()
    run = asyncio.create_task(ChatSession(state.paths, me, "alice", "lobby", emit).run(lines))
    try:
        await asyncio.wait_for(joined.wait(), REJOIN_TIMEOUT)
        joined.clear()
        await asyncio.to_thread(server.stop)  # SIGTERM: the server says SHUTTING_DOWN
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)  # returns once it listens
        listening = time.monotonic()
        await asyncio.wait_for(joined.wait(), REJOIN_TIMEOUT)
        rejoined = time.monotonic()
        gaps = [b - a for a, b in zip(attempts, [*attempts[1:], rejoined], strict=True)]
        return rejoined - listening, max(gaps)
    finally:
        lines.put_nowait(None)
        await asyncio.wait_for(run, REJOIN_TIMEOUT)


async def measure(rounds: int, down: float) -> dict[str, Any]:
    ours_cap = chatsession.BACKOFF_MAX
    ours: list[tuple[float, float]] = []
    old: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server, state, me = setup(Path(tmp))
        try:
            for _ in range(rounds):  # alternate, so a busy moment hits both alike
                ours.append(await one_round(server, state, me, ours_cap, down))
                old.append(await one_round(server, state, me, OLD_CAP, down))
        finally:
            chatsession.BACKOFF_MAX = ours_cap
            server.stop()
    return {"rounds": rounds, "down_s": down, "cap_s": ours_cap, "old_cap_s": OLD_CAP,
            "rejoin_s": [r for r, _ in ours], "old_rejoin_s": [r for r, _ in old],
            "rejoin_median_s": statistics.median(r for r, _ in ours),
            "old_rejoin_median_s": statistics.median(r for r, _ in old),
            "max_gap_s": max(g for _, g in ours), "old_max_gap_s": max(g for _, g in old)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--down", type=float, default=20.0, help="seconds the server stays down")
    ap.add_argument("--quick", action="store_true", help="one round (about a minute)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rounds, down = (1, args.down) if args.quick else (args.rounds, args.down)
    r = asyncio.run(measure(rounds, down))
    print(f"{'backoff cap':>12} | {'rejoin, median':>15} | {'longest gap between attempts':>29} | rounds | outage")
    for cap, rejoin, gap, note in ((r["cap_s"], r["rejoin_median_s"], r["max_gap_s"], ""),
                                   (r["old_cap_s"], r["old_rejoin_median_s"], r["old_max_gap_s"], "  (baseline)")):
        print(f"{cap:>10.1f} s | {rejoin:>13.2f} s | {gap:>27.2f} s | {rounds:>6} | {down:.0f} s{note}")
    print("wrote", write_json("chat_reconnect", r, args.json))


if __name__ == "__main__":
    main()
