"""Join/leave churn in a room: what it costs the members' clients, with bursts settled (this code)
vs every change settled at once (baseline: settle_quiet = 0, the behaviour before), alternating
in one run.

carol joins and leaves #lobby N times as fast as she can pipeline requests; alice and bob (two
Messengers in this process) are members. Per mode:
- CPU seconds of this process from the first request until both members have seen all 2N events
  and settled (carol's own requests are in it too, the same in both modes);
- lines the members' UI would print (membership lines), and key rotations.

Run: python benchmarks/room_churn.py [--pairs N] [--rounds R] [--quick] [--json FILE]
Target (attack report item 9): a burst costs each member one rotation and a few lines, not one
rotation (a new key HPKE-sealed to every member) and two lines per pair. Every wait is bounded.
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
from securecomm.client import events as E
from securecomm.client import messenger as M
from securecomm.client import rooms as R
from securecomm.client.login import connect_profile
from securecomm.crypto import identity as ident

USERS = ("alice", "bob", "carol")
SETTLED_TIMEOUT = 120.0  # the longest a round may take to see every event


def setup(tmp: Path) -> tuple[H.Proc, dict[str, State]]:
    srv = tmp / "srv"
    H.securecomm(srv, "certgen")
    server = H.start_server(srv)
    states = {}
    for user in USERS:
        H.securecomm(srv, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
        H.securecomm(tmp / user, "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                     str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
        states[user] = State(home=str(tmp / user))
    return server, states


async def member(state: State, quiet: float, events: list[Any]) -> tuple[M.Messenger, asyncio.Task[None]]:
    me = ident.load(state.paths.identity_key("default"))
    client, profile = await connect_profile(state.paths, me)
    m = M.Messenger(client, me, profile.user, state.paths, events.append)
    m.settle_quiet = quiet
    return m, asyncio.create_task(m.run())


def seen(events: list[Any]) -> int:
    return sum(e.more or 1 for e in events if isinstance(e, E.Membership) and e.user == "carol")


async def until(pred: Any) -> None:
    deadline = time.monotonic() + SETTLED_TIMEOUT
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("the members did not see every event in time")
        await asyncio.sleep(0.02)


async def one_round(states: dict[str, State], quiet: float, pairs: int) -> dict[str, float]:
    evs: list[list[Any]] = [[], []]
    (a, pa), (b, pb) = [await member(states[u], quiet, ev) for u, ev in zip(("alice", "bob"), evs, strict=True)]
    me = ident.load(states["carol"].paths.identity_key("default"))
    carol, _ = await connect_profile(states["carol"].paths, me)
    try:
        await a.join("lobby")
        await b.join("lobby")
        rot0 = a.rooms["lobby"].rotations + b.rooms["lobby"].rotations
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.gather(*[carol.request(op, room="lobby") for _ in range(pairs) for op in ("join", "leave")])
        await until(lambda: all(seen(ev) == 2 * pairs for ev in evs)
                    and a.rooms["lobby"].settle is None and b.rooms["lobby"].settle is None)
        lines = sum(isinstance(e, E.Membership) for ev in evs for e in ev) / 2
        return {"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t0, "lines_per_member": lines,
                "rotations_per_member": (a.rooms["lobby"].rotations + b.rooms["lobby"].rotations - rot0) / 2}
    finally:
        for m, pump in ((a, pa), (b, pb)):
            pump.cancel()
            await m.client.close()
        await carol.close()


async def measure(pairs: int, rounds: int) -> dict[str, Any]:
    ours: list[dict[str, float]] = []
    old: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server, states = setup(Path(tmp))
        try:
            for _ in range(rounds):  # alternate, so a busy moment hits both alike
                ours.append(await one_round(states, R.SETTLE_QUIET, pairs))
                old.append(await one_round(states, 0.0, pairs))
        finally:
            server.stop()

    def med(rs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    keys = ("cpu_s", "wall_s", "lines_per_member", "rotations_per_member")
    return {"pairs": pairs, "rounds": rounds, "settle_quiet_s": R.SETTLE_QUIET, "settle_max_s": R.SETTLE_MAX,
            **{k: med(ours, k) for k in keys}, **{f"old_{k}": med(old, k) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="300 pairs, one round")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pairs, rounds = (300, 1) if args.quick else (args.pairs, args.rounds)
    r = asyncio.run(measure(pairs, rounds))
    print(f"{'mode':>22} | {'CPU':>8} | {'lines/member':>12} | {'rotations/member':>16} | pairs")
    for name, p in (("settled (this code)", ""), ("each change (baseline)", "old_")):
        print(f"{name:>22} | {r[p + 'cpu_s']:>6.2f} s | {r[p + 'lines_per_member']:>12.0f} | "
              f"{r[p + 'rotations_per_member']:>16.0f} | {pairs}")
    print("wrote", write_json("room_churn", r, args.json))


if __name__ == "__main__":
    main()
