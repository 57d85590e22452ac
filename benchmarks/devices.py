"""Devices and forward secrecy (issue 12): what prekeys cost, beside today's envelopes, in one run.

Run: python benchmarks/devices.py [--quick] [--json FILE]

Figures (median per call, 1 KiB body, ML-KEM-768+X25519 unless said):
- direct message end to end, crypto and key handling only: sender checks the
  claimed prekey and seals, the server parses and checks the signature, the
  recipient opens and erases the one-time key file; vs today's version 1
  (seal to the identity, check, open).           Target: under 1.3x.
- prekeys: a 100-prekey batch made and signed (client), checked (server),
  its size (storage per device), and the server's cost per claim (SQLite).
- fan-out: one direct message to a user with 5 devices plus 4 own devices
  (claim + 9 seals) vs one version-1 seal.
Nothing is asserted; every loop is bounded by its count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import per_call_us, write_json
from securecomm.crypto import devices as D
from securecomm.crypto import envelope as E
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.store.db import Store
from securecomm.store.devicekeys import DeviceKeys
from securecomm.store.devices import DeviceStore

BODY = bytes(range(256)) * 4
KEM = "mlkem768-x25519"


def _timed(fn: Any, n: int) -> float:
    """Median µs of n single calls (for calls that consume state, so no batching)."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def direct(rounds: int, tmp: Path) -> dict[str, float]:
    alice, bob = PrivateIdentity.generate(KEM), PrivateIdentity.generate(KEM)

    def v1() -> None:
        env = E.seal(BODY, alice, bob.public)
        E.parse(env).verify(alice.public)  # the server's check
        E.open_envelope(env, bob, alice.public)

    keys = DeviceKeys(tmp / "bob-device", KEM)
    signed = iter(keys.new_one_time(bob, rounds + 5))

    def v2() -> None:
        prekey = K.Prekey.decode(next(signed).encode())  # as claimed from the server: checked by seal_v2
        env = K.seal_v2(BODY, alice, bob.public, prekey)
        K.parse_v2(env).verify(alice.public)
        keys.open(env, bob, alice.public)  # reads the key file, opens, zeroes and unlinks it

    r = {"v1_us": _timed(v1, rounds), "v2_us": _timed(v2, rounds)}
    r["ratio"] = r["v2_us"] / r["v1_us"]
    mem = K.MemoryPrekeys()
    more = [p.sign(bob) for p in _add(mem, bob, rounds + 5)]
    it = iter(more)

    def v2_memory() -> None:
        env = K.seal_v2(BODY, alice, bob.public, K.Prekey.decode(next(it).encode()))
        K.parse_v2(env).verify(alice.public)
        mem.open(env, bob, alice.public)

    r["v2_memory_us"] = _timed(v2_memory, rounds)
    r["ratio_memory"] = r["v2_memory_us"] / r["v1_us"]
    return r


def _add(mem: K.MemoryPrekeys, device: PrivateIdentity, n: int) -> list[K.PrivatePrekey]:
    out = []
    for start in range(1, n + 1, K.MAX_BATCH):
        batch = K.generate_batch(device, start, min(K.MAX_BATCH, n + 1 - start))
        for key in batch:
            mem.add(key)
        out += batch
    return out


def prekeys(rounds: int, tmp: Path) -> dict[str, float]:
    device = PrivateIdentity.generate(KEM)
    t0 = time.perf_counter()
    batch = [k.sign(device) for k in K.generate_batch(device, 1, K.MAX_BATCH)]
    make_ms = (time.perf_counter() - t0) * 1e3
    encoded = [p.encode() for p in batch]
    check_us = per_call_us(lambda: K.verify_batch(device.public, encoded, kind=K.ONE_TIME, seen=lambda _: False),
                           max(3, rounds // 10), batch=1)
    store = Store(tmp / "server.db")
    devices = DeviceStore(store.db)
    uid = store.add_user("bob", "x").id
    key = D.UserKey.generate()
    cert = D.DeviceCert.sign(key, "bob", device.public, "phone", 0)
    devices.publish_list(uid, D.DeviceList.sign(key, "bob", 1, 0, [cert.device_id]), [cert])
    t0 = time.perf_counter()
    devices.upload_prekeys(cert.device_id, batch, None)
    upload_ms = (time.perf_counter() - t0) * 1e3
    claim_us = _timed(lambda: devices.claim(uid), min(rounds, K.MAX_BATCH - 1))
    store.close()
    return {"batch_make_sign_ms": make_ms, "batch_check_ms": check_us / 1e3, "batch_store_ms": upload_ms,
            "claim_us": claim_us, "batch_bytes": sum(map(len, encoded)), "prekey_bytes": len(encoded[0])}


def fanout(rounds: int) -> dict[str, float]:
    alice = PrivateIdentity.generate(KEM)
    targets = [PrivateIdentity.generate(KEM) for _ in range(9)]  # bob's 5 + alice's 4 others
    pools = [iter([p.sign(t) for p in K.generate_batch(t, 1, min(K.MAX_BATCH, rounds + 2))]) for t in targets]

    def v2() -> None:
        for t, pool in zip(targets, pools, strict=True):
            K.seal_v2(BODY, alice, t.public, K.Prekey.decode(next(pool).encode()))

    one = _timed(lambda: E.seal(BODY, alice, targets[0].public), rounds)
    nine = _timed(v2, min(rounds, K.MAX_BATCH))
    return {"v1_one_seal_us": one, "v2_nine_devices_us": nine, "ratio": nine / one, "per_device_us": nine / 9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rounds = 15 if args.quick else 80
    with tempfile.TemporaryDirectory() as tmp:
        results = {"direct": direct(rounds, Path(tmp)), "prekeys": prekeys(rounds, Path(tmp)),
                   "fanout": fanout(rounds)}
    d, p, f = results["direct"], results["prekeys"], results["fanout"]
    print(f"direct message, seal+check+open (µs): v1 {d['v1_us']:.0f} | v2 {d['v2_us']:.0f} "
          f"(key files erased with fsync) {d['ratio']:.2f}x, {d['v2_memory_us']:.0f} (keys in memory) "
          f"{d['ratio_memory']:.2f}x  target < 1.3x")
    print(f"prekeys: 100 made+signed {p['batch_make_sign_ms']:.1f} ms, checked {p['batch_check_ms']:.1f} ms, "
          f"stored {p['batch_store_ms']:.1f} ms; claim {p['claim_us']:.0f} µs; "
          f"{p['batch_bytes']} bytes per 100 ({p['prekey_bytes']} each)")
    print(f"fan-out to 5+4 devices: {f['v2_nine_devices_us']:.0f} µs vs one v1 seal {f['v1_one_seal_us']:.0f} µs "
          f"({f['ratio']:.1f}x, {f['per_device_us']:.0f} µs per device)")
    print("wrote", write_json("devices", {"quick": args.quick, "rounds": rounds, **results}, args.json))


if __name__ == "__main__":
    main()
