"""Envelope cost per suite: seal and open of a 1 KiB body vs the raw calls they make.

Run: python benchmarks/envelope.py [--rounds N] [--json FILE]
Target (issue 3): the envelope adds under 20% to raw HPKE + Ed25519 (same run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import per_call_us, write_json
from securecomm.crypto import envelope as E
from securecomm.crypto.identity import PrivateIdentity


def measure_suite(kem: str, rounds: int) -> dict[str, float]:
    sender, recipient = PrivateIdentity.generate(kem), PrivateIdentity.generate(kem)
    body = bytes(1024)
    suite, info = E._SUITES[kem], E.INFO_LABEL + bytes(E.HEADER_SIZE)
    raw = E.seal(body, sender, recipient.public)
    ct = suite.encrypt(body, recipient.public.hpke_key, info=info)
    sig = sender.sign(ct)
    vk = sender.public.verify_key
    r = {
        "hpke_encrypt_us": per_call_us(lambda: suite.encrypt(body, recipient.public.hpke_key, info=info), rounds),
        "hpke_decrypt_us": per_call_us(lambda: suite.decrypt(ct, recipient.hpke_key, info=info), rounds),
        "ed25519_sign_us": per_call_us(lambda: sender.sign(ct), rounds),
        "ed25519_verify_us": per_call_us(lambda: vk.verify(sig, ct), rounds),
        "seal_us": per_call_us(lambda: E.seal(body, sender, recipient.public), rounds),
        "open_us": per_call_us(lambda: E.open_envelope(raw, recipient, sender.public), rounds),
    }
    r["seal_overhead"] = r["seal_us"] / (r["hpke_encrypt_us"] + r["ed25519_sign_us"]) - 1
    r["open_overhead"] = r["open_us"] / (r["hpke_decrypt_us"] + r["ed25519_verify_us"]) - 1
    r["envelope_bytes"] = len(raw)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {kem: measure_suite(kem, args.rounds) for kem in ("mlkem768-x25519", "x25519", "p256")}
    print(f"{'suite':16} {'hpke enc':>9} {'sign':>7} {'seal':>7} {'ovh':>6} | {'hpke dec':>9} {'verify':>7} "
          f"{'open':>7} {'ovh':>6} | bytes   (median µs, 1 KiB body)")
    for kem, r in results.items():
        print(f"{kem:16} {r['hpke_encrypt_us']:9.1f} {r['ed25519_sign_us']:7.1f} {r['seal_us']:7.1f} "
              f"{r['seal_overhead']:+6.1%} | {r['hpke_decrypt_us']:9.1f} {r['ed25519_verify_us']:7.1f} "
              f"{r['open_us']:7.1f} {r['open_overhead']:+6.1%} | {r['envelope_bytes']}")
    print("wrote", write_json("envelope", {"rounds": args.rounds, "suites": results}, args.json))


if __name__ == "__main__":
    main()
