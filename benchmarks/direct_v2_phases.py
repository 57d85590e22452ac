"""Where a direct message's time goes, v1 vs v2, phase by phase (issue 12; see benchmarks/direct_v2.py).

Run: python benchmarks/direct_v2_phases.py [--rounds N]

The same server, accounts and alternating rounds as direct_v2.py (v2 as `chat`
sends: claimed ahead), but every client in ONE process, so that one clock
times the phases: the client functions on the message's path are wrapped
with timers (sealing, the claim, the recipient's open, seen-ids, erase,
ACK). Wrapping costs a little and the recipients share the senders' event
loop, so the totals are higher than direct_v2.py's; the phases are what this
is for. Prints the median of each phase per message, and each phase's total
over the run divided by the rounds (a phase that runs off the path, such as
the claim made ahead, shows there and not in `send to receipt`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import direct_v2 as B
from benchmarks import harness as H
from securecomm.client import directv2 as DV
from securecomm.client import messenger as MS
from securecomm.crypto import envelope as E
from securecomm.crypto import prekeys as K
from securecomm.store import devicekeys as DK

SAMPLES: dict[tuple[str, str], list[float]] = {}
SERIES = {"tag": "warm-up"}


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def add(t0: float) -> None:
        SAMPLES.setdefault((SERIES["tag"], name), []).append(time.perf_counter() - t0)

    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def waited(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*a, **k)
            finally:
                add(t0)
        return waited

    @functools.wraps(fn)
    def called(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            add(t0)
    return called


def _wrap() -> None:
    for owner, attr, name in (
            (MS.Messenger, "seal_direct", "sender: seal (claim, checks, HPKE, sign)"),
            (DV.DeviceDirectory, "claim", "sender: prekeys_claim round trip (in the claim ahead)"),
            (DV.DeviceDirectory, "verify", "sender: list and certificates verified"),
            (K, "seal_v2", "sender: seal_v2 (prekey signature, HPKE, sign)"),
            (E, "seal", "sender: seal v1 (HPKE, sign)"),
            (MS.Messenger, "send_sealed_direct", "DIRECT to RECEIPT (server checks and stores)"),
            (MS.Messenger, "_on_deliver", "recipient: DELIVER handled, to ACK"),
            (MS, "open_with_prekey", "recipient: open v2 (key, HPKE, digest)"),
            (E, "open_envelope", "recipient: open v1 (HPKE, digest)"),
            (MS.SeenIds, "add", "recipient: seen-ids appended (fsync)"),
            (MS, "erase", "recipient: one-time key wiped (fdatasync)"),
            (DK.DeviceKeys, "after_ack", "recipient: after the ACK (unlink, keys read ahead)"),
            (MS.Messenger, "_claim_ahead", "sender: next claim made ahead (off the path)")):
        setattr(owner, attr, _timed(name, getattr(owner, attr)))


async def _round(sender: Any, to: str, tag: str) -> float:
    await asyncio.sleep(B.TYPING_PAUSE)
    SERIES["tag"] = tag
    t0 = time.perf_counter()
    _, msg_id = await sender.send_direct(to, B.BODY)
    t1 = time.perf_counter()
    await sender.wait_delivered(msg_id, 30)
    SAMPLES.setdefault((tag, "RECEIPT to signed delivery receipt"), []).append(time.perf_counter() - t1)
    return (time.perf_counter() - t0) * 1000


async def measure(homes: dict[str, Path], rounds: int) -> tuple[list[float], list[float]]:
    n = B.senders(rounds)
    v2s = [await B._messenger(homes[f"alice{i}"], True, ahead=True) for i in range(n)]
    v1s = [await B._messenger(homes[f"carol{i}"], False) for i in range(n)]
    readers = [await B._messenger(homes["bob"], True), await B._messenger(homes["dave"], False)]
    try:
        for a, c in zip(v2s, v1s, strict=True):
            await _round(a, "bob", "warm-up")
            await _round(c, "dave", "warm-up")
        v1, v2 = [], []
        for i in range(rounds):
            v1.append(await _round(v1s[i % n], "dave", "v1"))
            v2.append(await _round(v2s[i % n], "bob", "v2"))
        await asyncio.sleep(0.3)  # the last claims ahead and after-ACK work, counted for the last round
    finally:
        for m in (*v2s, *v1s, *readers):
            if m.devices is not None:
                m.devices.stop_ahead()
            m.pump.cancel()
            await m.client.close()
    return v1, v2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=48)
    args = ap.parse_args()
    if not 1 <= args.rounds <= B.MAX_ROUNDS:
        ap.error(f"--rounds must be 1-{B.MAX_ROUNDS}")
    _wrap()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        srv = root / "srv"
        H.securecomm(srv, "certgen")
        server = H.start_server(srv, "--rate", "0", "--relay-rate", "0", serve_version_1=True)
        try:
            homes = {}
            n = B.senders(args.rounds)
            for user in ("bob", "dave", *(f"alice{i}" for i in range(n)), *(f"carol{i}" for i in range(n))):
                H.securecomm(srv, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
                homes[user] = root / user
                H.securecomm(homes[user], "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                             str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
            v1, v2 = asyncio.run(measure(homes, args.rounds))
        finally:
            server.stop()
    m1, m2 = statistics.median(v1), statistics.median(v2)
    print(f"send to signed delivery receipt, median of {args.rounds} rounds, one process: "
          f"v1 {m1:.2f} ms, v2 {m2:.2f} ms ({m2 / m1:.2f}x)")
    print("| phase | v1 median ms | v1 per message ms | v2 median ms | v2 per message ms |")
    print("|---|---|---|---|---|")
    names = sorted({name for tag, name in SAMPLES if tag in ("v1", "v2")})
    for name in names:
        cells = []
        for tag in ("v1", "v2"):
            xs = SAMPLES.get((tag, name), [])
            cells += [f"{statistics.median(xs) * 1000:.3f}", f"{sum(xs) / args.rounds * 1000:.3f}"] if xs else ["", ""]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
