"""A direct message end to end through the real server: envelope version 2 vs version 1 (issue 12).

Run: python benchmarks/direct_v2.py [--rounds N] [--json FILE]

One server (real TLS, SQLite), accounts each logged in as `user login` does
it. Three series, one message of each per round, alternating in one run:

- v1: carol<i> -> dave, the same Messenger forced to version 1 (sealed to the
  pinned identity);
- v2: alice<i> -> bob on version 2 as `chat` runs it (docs/PROTOCOL.md 6.13):
  seal to a ONE-TIME prekey claimed ahead (right after the sender's previous
  message; that claim also checks the previous message reached every listed
  device), DIRECT, RECEIPT, DELIVER, open, seen-ids recorded, the one-time
  key erased, ACK, DELIVERED verified;
- v2 claim at send: grace<i> -> heidi, the same without claiming ahead, as
  one-shot `send --to` does it (prekeys_claim is on the timed path);
- one-shot command, v1 and v2: what `send --to USER` waits for from a fresh
  connection: TLS handshake, HELLO, key login, (v2: the device list and a
  claim), seal, DIRECT, the server's RECEIPT, close (ivan<i> -> judy on v2,
  carol<i> -> dave on v1; a new Messenger each time, as each command has);
- v2 last resort: frank -> erin once frank's one-time budget for erin's device
  is spent (docs/PROTOCOL.md 6.5: 20 an hour per claiming account), so every
  claim answers erin's last-resort prekey (reused 5 s by the client, 6.13)
  and nothing is erased: the cost of the burst case, without forward secrecy
  per message.

The server hands one claiming account at most 20 one-time prekeys of a device
an hour (6.5), so the v2 and v1 series rotate over ceil(rounds / 16) senders:
every timed v2 message is sealed to a one-time prekey (checked: the JSON
counts them). The recipients run in a process of their own (another device:
its opening, erasing and reading ahead do not share the senders' event loop).
Each round is one message from send until its signed delivery receipt is
back at the sender, after an untimed 20 ms pause (as between
typed lines). Medians reported; target: v2 under 1.3x v1. Nothing is
asserted but the key kinds; every loop is bounded by its count.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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
#: Timed messages per v2 sender: under the server's 20 one-time prekeys per (claimer, device) an
#: hour, less the warm-up (docs/PROTOCOL.md 6.5).
PER_SENDER = 16
#: The recipient device hands out 100 one-time prekeys an hour to everyone (6.5): rounds + warm-ups
#: must stay under it.
MAX_ROUNDS = 80


def _home(home: Path) -> tuple[Any, Any]:
    """(paths, identity) of a home logged in with `user login`."""
    from securecomm.cli.context import State
    from securecomm.crypto import identity as ident

    state = State(home=str(home))
    return state.paths, ident.load(state.paths.identity_key("default"))


async def _connected(paths: Any, me: Any, v2: bool, **options: Any) -> Any:
    """A Messenger on a new connection; v1: offered version 1 only and sealing to the identity, as a home
    before version 2 (the baseline; the server serves it: serve_v1.py)."""
    from securecomm.client.connection import Client
    from securecomm.client.login import connect_profile
    from securecomm.client.messenger import Messenger

    offered, Client.versions = Client.versions, (Client.versions if v2 else (1,))
    try:
        client, profile = await connect_profile(paths, me)
    finally:
        Client.versions = offered
    m = Messenger(client, me, profile.user, paths, lambda ev: None, **options)
    if not v2:
        m.devices = None
    return m


async def _messenger(home: Path, v2: bool, ahead: bool = False) -> Any:
    m = await _connected(*_home(home), v2, ahead=ahead)
    m.pump = asyncio.create_task(m.run())
    return m


#: Untimed pause before each message, as between the lines a person types in chat (the same for v1).
TYPING_PAUSE = 0.02


async def _round(sender: Any, to: str) -> tuple[float, bool]:
    """(ms from send to the signed delivery receipt, whether the copy was sealed without a one-time key)."""
    await asyncio.sleep(TYPING_PAUSE)
    t0 = time.perf_counter()
    sealed = await sender.seal_direct(to, BODY)
    await sender.send_sealed_direct(to, sealed)
    receipt = await sender.wait_delivered(sealed.msg_id, 30)
    assert receipt.verified
    return (time.perf_counter() - t0) * 1000, sealed.without_one_time_key


async def _oneshot(home: Path, v2: bool, to: str) -> float:
    """ms for one `send --to` as the command runs it after start-up: connect and log in, seal, DIRECT,
    the stored RECEIPT, close."""
    paths, me = _home(home)
    await asyncio.sleep(TYPING_PAUSE)
    t0 = time.perf_counter()
    m = await _connected(paths, me, v2, deliveries=False)
    pump = asyncio.create_task(m.run())
    try:
        sealed = await m.seal_direct(to, BODY)
        await m.send_sealed_direct(to, sealed)
    finally:
        pump.cancel()
        await m.client.close()
    ms = (time.perf_counter() - t0) * 1000
    assert m.v2 == v2 and (not v2 or not sealed.without_one_time_key)
    return ms


def senders(rounds: int) -> int:
    return max(1, -(-rounds // PER_SENDER))


#: The recipients (user, on version 2), run by `_readers` in their own process.
READERS = (("bob", True), ("dave", False), ("erin", True), ("heidi", True), ("judy", True))


def _readers(homes: dict[str, str], ready: Any, stop: Any) -> None:
    """The recipients' device: each opens what it is sent, erases the key, acknowledges; until `stop`."""
    async def run() -> None:
        ms = [await _messenger(Path(homes[user]), v2) for user, v2 in READERS]
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for m in ms:
            m.pump.cancel()
            await m.client.close()

    asyncio.run(run())


async def measure(homes: dict[str, Path], rounds: int) -> dict[str, Any]:
    n = senders(rounds)
    v2s = [await _messenger(homes[f"alice{i}"], True, ahead=True) for i in range(n)]
    at_send = [await _messenger(homes[f"grace{i}"], True) for i in range(n)]
    v1s = [await _messenger(homes[f"carol{i}"], False) for i in range(n)]
    lr = await _messenger(homes["frank"], True)
    try:
        assert all(m.v2 for m in (*v2s, *at_send)) and not any(m.v2 for m in v1s) and lr.v2
        for a, g, c in zip(v2s, at_send, v1s, strict=True):  # warm-up: pins, directory caches
            await _round(a, "bob")
            await _round(g, "heidi")
            await _round(c, "dave")
        for i in range(n):  # warm-up of the one-shot senders: judy's user key pinned on first use
            await _oneshot(homes[f"ivan{i}"], True, "judy")
        while not (await _round(lr, "erin"))[1]:  # spend frank's one-time budget for erin (20, 6.5)
            pass
        v1: list[float] = []
        v2: list[float] = []
        v2_send: list[float] = []
        v2_lr: list[float] = []
        shot1: list[float] = []
        shot2: list[float] = []
        one_time = 0
        for i in range(rounds):
            v1.append((await _round(v1s[i % n], "dave"))[0])
            ms, without = await _round(v2s[i % n], "bob")
            v2.append(ms)
            one_time += not without
            ms, without = await _round(at_send[i % n], "heidi")
            v2_send.append(ms)
            one_time += not without
            ms, without = await _round(lr, "erin")
            assert without, "the last-resort series got a one-time prekey"
            v2_lr.append(ms)
            shot1.append(await _oneshot(homes[f"carol{i % n}"], False, "dave"))
            shot2.append(await _oneshot(homes[f"ivan{i % n}"], True, "judy"))
    finally:
        for m in (*v2s, *at_send, *v1s, lr):
            if m.devices is not None:
                m.devices.stop_ahead()
            m.pump.cancel()
            await m.client.close()
    m1, m2, m3, m4, o1, o2 = (statistics.median(x) for x in (v1, v2, v2_send, v2_lr, shot1, shot2))
    return {"rounds": rounds, "senders": n, "v2_one_time_messages": one_time,
            "v1_ms_median": round(m1, 2), "v2_ms_median": round(m2, 2), "ratio": round(m2 / m1, 2),
            "v2_claim_at_send_ms_median": round(m3, 2), "claim_at_send_ratio": round(m3 / m1, 2),
            "v2_last_resort_ms_median": round(m4, 2), "last_resort_ratio": round(m4 / m1, 2),
            "oneshot_v1_ms_median": round(o1, 2), "oneshot_v2_ms_median": round(o2, 2),
            "oneshot_ratio": round(o2 / o1, 2), "target_ratio": 1.3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", type=Path, help="where to write the JSON (default benchmarks/results-direct-v2.json)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= MAX_ROUNDS:
        ap.error(f"--rounds must be 1-{MAX_ROUNDS}: the recipient device hands out 100 one-time prekeys an hour")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        srv = root / "srv"
        H.securecomm(srv, "certgen")
        server = H.start_server(srv, "--rate", "0", "--relay-rate", "0", serve_version_1=True)
        try:
            homes = {}
            n = senders(args.rounds)
            for user in ("bob", "dave", "erin", "frank", "heidi", "judy", *(f"alice{i}" for i in range(n)),
                         *(f"ivan{i}" for i in range(n)),
                         *(f"grace{i}" for i in range(n)), *(f"carol{i}" for i in range(n))):
                H.securecomm(srv, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
                homes[user] = root / user
                H.securecomm(homes[user], "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                             str(srv / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
            spawn = multiprocessing.get_context("spawn")
            ready, stop = spawn.Event(), spawn.Event()
            readers = spawn.Process(target=_readers, args=({u: str(homes[u]) for u, _ in READERS}, ready, stop))
            readers.start()
            try:
                if not ready.wait(120):
                    raise RuntimeError("the recipients' process did not start")
                result = asyncio.run(measure(homes, args.rounds))
            finally:
                stop.set()
                readers.join(30)
                if readers.is_alive():
                    readers.kill()
        finally:
            server.stop()
    print("| one direct message, send to signed delivery receipt (ms, median) | v1 | v2 | v2/v1 |")
    print("|---|---|---|---|")
    print(f"| {result['rounds']} alternating rounds, 200 B, ML-KEM-768+X25519, one-time prekeys "
          f"({result['v2_one_time_messages']}/{2 * result['rounds']}), chat (claimed ahead) | "
          f"{result['v1_ms_median']} | {result['v2_ms_median']} | {result['ratio']}x (target < 1.3x) |")
    print(f"| the same, claimed at send (one-shot `send --to`) | {result['v1_ms_median']} | "
          f"{result['v2_claim_at_send_ms_median']} | {result['claim_at_send_ratio']}x |")
    print(f"| the same, last-resort prekey (claim budget spent, 6.5) | {result['v1_ms_median']} | "
          f"{result['v2_last_resort_ms_median']} | {result['last_resort_ratio']}x |")
    print(f"| one-shot `send --to` from a fresh connection (TLS, login, seal, RECEIPT) | "
          f"{result['oneshot_v1_ms_median']} | {result['oneshot_v2_ms_median']} | {result['oneshot_ratio']}x |")
    print(f"json: {write_json('direct-v2', result, args.json)}")


if __name__ == "__main__":
    main()
