"""A room key rotation through the real server: version 2 (one-time prekeys) vs version 1 (issue 12).

Run: python benchmarks/room_keys_v2.py [--members N] [--rounds R] [--json FILE]

One server (real TLS, SQLite; version 1 also served, for the baseline: benchmarks/serve_v1.py),
N accounts each logged in as `user login` does it. The same N people are in two rooms: #v2
through Messengers speaking version 2 (ROOM_KEY sealed to a one-time prekey of each member
device, after one `prekeys_claim` per member, docs/PROTOCOL.md 6.13) and #v1 through
Messengers forced to version 1 (HELLO [1], sealed to each member's long-term identity). A round
is one member's rotation as it happens after a leave: a new sender key handed to the N-1 others
(claims and seals included), until every other member holds it. Rounds alternate v1 and v2;
medians reported. Also reported: the claims one rotation costs the rotating account against
the server's limits (60 a minute after a burst of 240; 20 an hour per claimed device from one
account before the last-resort prekey, 100 an hour per device from everyone). Nothing is
asserted; every wait is bounded.
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

WAIT = 60.0


async def _messenger(home: Path, v2: bool) -> Any:
    from securecomm.cli.context import State
    from securecomm.client.connection import Client
    from securecomm.client.login import connect_profile
    from securecomm.client.messenger import Messenger
    from securecomm.crypto import identity as ident

    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    offered = Client.versions
    Client.versions = offered if v2 else (1,)
    try:
        client, profile = await connect_profile(state.paths, me)
    finally:
        Client.versions = offered
    m = Messenger(client, me, profile.user, state.paths, lambda ev: None)
    if not v2:
        m.devices = None  # as a home before version 2
    m.pump = asyncio.create_task(m.run())
    return m


async def _until(pred: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("a member never got the new key")
        await asyncio.sleep(0.001)


async def _rotation(ms: list[Any], room: str) -> float:
    """The first member rotates (as after a leave) and hands its new key to every other member."""
    first = ms[0]
    state = first.rooms[room]
    t0 = time.perf_counter()
    async with state.lock:
        state.rotate = True
        await first._settle_locked(state)
    key_id = state.my_key.key_id
    fp = first.me.public.fingerprint
    def held(m: Any) -> bool:
        key = m.rooms[room].sender_key(first.user, fp)
        return key is not None and key.key_id == key_id

    await _until(lambda: all(held(m) for m in ms[1:]))
    return (time.perf_counter() - t0) * 1000


async def measure(homes: list[Path], rounds: int) -> dict[str, Any]:
    v2 = [await _messenger(h, True) for h in homes]
    v1 = [await _messenger(h, False) for h in homes]
    try:
        assert all(m.v2 for m in v2) and not any(m.v2 for m in v1)
        for ms, room in ((v2, "v2"), (v1, "v1")):
            for m in ms:
                await m.join(room)
            await _until(lambda ms=ms, room=room: all(len(m.rooms[room].keys) == len(ms) - 1 for m in ms))
        await _rotation(v1, "v1")  # warm-up: directory caches
        await _rotation(v2, "v2")
        t1, t2 = [], []
        for _ in range(rounds):
            t1.append(await _rotation(v1, "v1"))
            t2.append(await _rotation(v2, "v2"))
    finally:
        for m in v1 + v2:
            m.pump.cancel()
            await m.client.close()
    m1, m2 = statistics.median(t1), statistics.median(t2)
    others = len(homes) - 1
    return {"members": len(homes), "rounds": rounds, "v1_ms_median": round(m1, 2), "v2_ms_median": round(m2, 2),
            "ratio": round(m2 / m1, 2), "claims_per_rotation": others,
            "rotations_per_minute_within_claim_limit": round(60 / others, 1),
            "rotations_per_hour_before_last_resort_per_pair": 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, help="where to write the JSON (default benchmarks/results-room-keys-v2.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        srv = root / "srv"
        H.securecomm(srv, "certgen")
        server = H.start_server(srv, "--rate", "0", "--relay-rate", "0", serve_version_1=True)
        try:
            homes = []
            for i in range(args.members):
                user = f"member{i}"
                H.securecomm(srv, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
                homes.append(root / user)
                H.securecomm(homes[-1], "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                             str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
            result = asyncio.run(measure(homes, args.rounds))
        finally:
            server.stop()
    print("| one room key rotation, to every other member (ms, median) | v1 | v2 | v2/v1 |")
    print("|---|---|---|---|")
    print(f"| {result['members']} members, {result['rounds']} alternating rounds, ML-KEM-768+X25519 | "
          f"{result['v1_ms_median']} | {result['v2_ms_median']} | {result['ratio']}x |")
    print(f"claims per rotation: {result['claims_per_rotation']} (limit 60 a minute after a burst of 240: "
          f"{result['rotations_per_minute_within_claim_limit']} rotations a minute sustained)")
    print(f"json: {write_json('room-keys-v2', result, args.json)}")


if __name__ == "__main__":
    main()
