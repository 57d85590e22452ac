"""A direct message end to end through the real server: envelope version 2 vs version 1 (issue 12).

Run: python benchmarks/direct_v2.py [--rounds N] [--json FILE]

One server (real TLS, SQLite), four accounts each logged in as `user login`
does it. alice -> bob speak version 2 (Messenger as `send --to` and `inbox
--follow` run it: prekeys_claim, seal to a one-time prekey, DIRECT, RECEIPT,
DELIVER, open and erase the key, ACK, DELIVERED verified), carol -> dave the
same Messenger forced to version 1 (seal to the pinned identity). Rounds
alternate v1 and v2 in one run; each round is one message from send until its
signed delivery receipt is back at the sender, after an untimed 20 ms pause
(as between typed lines). Medians reported; target: v2
under 1.3x v1. Nothing is asserted; every loop is bounded by its count.
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

BODY = b"x" * 200


async def _messenger(home: Path, v2: bool) -> Any:
    from securecomm.cli.context import State
    from securecomm.client.login import connect_profile
    from securecomm.client.messenger import Messenger
    from securecomm.crypto import identity as ident

    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, profile = await connect_profile(state.paths, me)
    m = Messenger(client, me, profile.user, state.paths, lambda ev: None)
    if not v2:
        m.devices = None  # as a home before version 2: seal to the identity, open with it
    m.pump = asyncio.create_task(m.run())
    return m


#: Untimed pause before each message, as between the lines a person types in chat (the same for v1).
TYPING_PAUSE = 0.02


async def _round(sender: Any, to: str) -> float:
    await asyncio.sleep(TYPING_PAUSE)
    t0 = time.perf_counter()
    _, msg_id = await sender.send_direct(to, BODY)
    receipt = await sender.wait_delivered(msg_id, 30)
    assert receipt.verified
    return (time.perf_counter() - t0) * 1000


async def measure(homes: dict[str, Path], rounds: int) -> dict[str, Any]:
    from securecomm.client.connection import Client

    a, b = await _messenger(homes["alice"], True), await _messenger(homes["bob"], True)
    offered, Client.versions = Client.versions, (1,)  # the baseline's sessions speak version 1 (serve_v1.py)
    try:
        c, d = await _messenger(homes["carol"], False), await _messenger(homes["dave"], False)
    finally:
        Client.versions = offered
    try:
        assert a.v2 and b.v2 and not c.v2 and not d.v2
        await _round(a, "bob")  # warm-up: pins, directory caches
        await _round(c, "dave")
        v1, v2 = [], []
        for _ in range(rounds):
            v1.append(await _round(c, "dave"))
            v2.append(await _round(a, "bob"))
    finally:
        for m in (a, b, c, d):
            m.pump.cancel()
            await m.client.close()
    m1, m2 = statistics.median(v1), statistics.median(v2)
    return {"rounds": rounds, "v1_ms_median": round(m1, 2), "v2_ms_median": round(m2, 2),
            "ratio": round(m2 / m1, 2), "target_ratio": 1.3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", type=Path, help="where to write the JSON (default benchmarks/results-direct-v2.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        srv = root / "srv"
        H.securecomm(srv, "certgen")
        server = H.start_server(srv, "--rate", "0", "--relay-rate", "0", serve_version_1=True)
        try:
            homes = {}
            for user in ("alice", "bob", "carol", "dave"):
                H.securecomm(srv, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
                homes[user] = root / user
                H.securecomm(homes[user], "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                             str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
            result = asyncio.run(measure(homes, args.rounds))
        finally:
            server.stop()
    print("| one direct message, send to signed delivery receipt (ms, median) | v1 | v2 | v2/v1 |")
    print("|---|---|---|---|")
    print(f"| {result['rounds']} alternating rounds, 200 B, ML-KEM-768+X25519 | {result['v1_ms_median']} | "
          f"{result['v2_ms_median']} | {result['ratio']}x (target < 1.3x) |")
    print(f"json: {write_json('direct-v2', result, args.json)}")


if __name__ == "__main__":
    main()
