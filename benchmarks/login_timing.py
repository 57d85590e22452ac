"""Failed password logins: does the answer's timing tell an unknown name from a wrong password?

Run: python benchmarks/login_timing.py [--quick] [--json FILE]

Against a real server on loopback, time LOGIN_PASSWORD -> ERROR (connection
and HELLO excluded) for: an unknown user, a known user with a wrong password,
and a known user with a 2,000-character password; the baseline from the same
run is a successful login (LOGIN_OK). The cases alternate in rounds so that a
busy moment hits all alike; medians are reported. The lockout is set out of
reach (--lock-after) so that every attempt is hashed. Target (issue 9 item 7):
the medians of the failure cases differ by well under the ~0.5 ms seen before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness as H
from benchmarks.common import write_json
from securecomm.client.login import connect
from securecomm.errors import AuthError

CASES = {
    "unknown_user": ("nobody", "wrong password here"),
    "wrong_password": ("alice", "wrong password here"),
    "long_password": ("alice", "x" * 2000),
    "success": ("alice", H.PASSWORD),
}
#: Every loop is bounded in count and in time.
MAX_SECONDS = 600


async def one(paths: Any, address: str, ca: str, user: str, password: str) -> float:
    client = await connect(paths, address, ca=ca)
    async with client:
        t0 = time.perf_counter()
        with contextlib.suppress(AuthError):  # every case but "success" is refused
            await client.login_password(user, password)
        return (time.perf_counter() - t0) * 1e3


async def measure(paths: Any, address: str, ca: str, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in CASES}
    deadline = time.monotonic() + MAX_SECONDS
    order = list(CASES)
    for i in range(rounds):
        if time.monotonic() > deadline:
            break
        for case in order[i % len(order):] + order[:i % len(order)]:  # rotated: no case is always first
            user, password = CASES[case]
            samples[case].append(await one(paths, address, ca, user, password))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="20 rounds instead of 200")
    ap.add_argument("--rounds", type=int, help="rounds of the four cases (default 200, --quick 20)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rounds = args.rounds or (20 if args.quick else 200)
    from securecomm.cli.context import State

    with tempfile.TemporaryDirectory() as tmp:
        srv_home, cli_home = Path(tmp) / "srv", Path(tmp) / "cli"
        H.securecomm(srv_home, "certgen")
        server = H.start_server(srv_home, "--lock-after", "1000000", "--rate", "0")
        try:
            H.securecomm(srv_home, "user", "add", "alice", "--password-stdin", input=(H.PASSWORD + "\n").encode())
            ca = str(srv_home / "tls" / "ca.pem")
            samples = asyncio.run(measure(State(home=str(cli_home)).paths, f"localhost:{server.port}", ca, rounds))
        finally:
            server.stop()
    medians = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "quick": args.quick, "rounds": len(samples["success"]), "median_ms": medians,
        "unknown_minus_wrong_ms": medians["unknown_user"] - medians["wrong_password"],
        "long_minus_wrong_ms": medians["long_password"] - medians["wrong_password"],
    }
    print(f"{'case':16} {'median ms':>10}   ({result['rounds']} rounds, alternating; LOGIN_PASSWORD -> answer)")
    for k, v in medians.items():
        print(f"{k:16} {v:10.2f}" + ("   <- baseline (same run)" if k == "success" else ""))
    print(f"unknown - wrong password: {result['unknown_minus_wrong_ms']:+.2f} ms; "
          f"2,000 characters - wrong password: {result['long_minus_wrong_ms']:+.2f} ms   (target: |diff| << 0.5 ms)")
    print("wrote", write_json("login-timing", result, args.json))


if __name__ == "__main__":
    main()
