"""Attack report item 4: pipelined `who` requests on a big room, against a bystander's PING.

Run: python benchmarks/who_flood.py [--quick] [--json FILE]

A room of MEMBERS sessions with ML-KEM-768 identity lines (~55 KB per `who`
answer). The attacker, another session, sends REQUESTS `who` in one write and
never reads. Baseline, same run: the bystander's PING round trips with no
flood. Reported: median and worst PING round trip without and during the
flood, and whether the attacker was cut off. Before the fix the event loop
answered every request of the read before serving anyone else (the attacker
measured 2,991 ms with 300 members and 1,200 requests).
Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness as H
from benchmarks.common import write_json
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder

MEMBERS, REQUESTS, PINGS = 32, 1200, 20


class Raw:
    """One TLS connection speaking frames by hand (the attacker's view)."""

    def __init__(self, port: int, ca: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                                    server_hostname="localhost")
        self.dec = FrameDecoder()

    def send(self, event: P.Event) -> None:
        self.sock.sendall(P.encode_event(event))

    def until(self, kind: type[P.Event]) -> P.Event:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frame = self.dec.next_frame()
            if frame is None:
                data = self.sock.recv(65536)
                if not data:
                    raise RuntimeError("closed by the server")
                self.dec.receive_data(data)
                continue
            ev = P.decode_payload(frame)
            if isinstance(ev, kind):
                return ev
            if isinstance(ev, P.Error):
                raise RuntimeError(ev.message)
        raise RuntimeError(f"no {kind.__name__} in time")

    def login(self, user: str, me: PrivateIdentity, password: str | None = None) -> Raw:
        self.send(P.Hello())
        hello = self.until(P.ServerHello)
        assert isinstance(hello, P.ServerHello)
        fp = PublicIdentity.from_line(hello.identity).fingerprint
        if password is not None:  # registers the key, with its proof of possession
            proof = me.sign(P.register_transcript(hello.challenge, fp, user))
            self.send(P.LoginPassword(user, password, me.public.line, proof))
        else:
            self.send(P.LoginKey(user, me.sign(P.login_transcript(hello.challenge, fp, user))))
        self.until(P.LoginOk)
        return self


def _rtt_ms(c: Raw) -> float:
    t0 = time.perf_counter()
    c.send(P.Ping())
    c.until(P.Pong)
    return (time.perf_counter() - t0) * 1e3


def run(members: int, requests: int, pings: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="securecomm-who-") as tmp:
        home = Path(tmp) / "srv"
        H.securecomm(home, "certgen")
        server = H.start_server(home, "--max-sessions-per-user", str(members + 8), "--rate", "0")
        try:
            port, ca = server.port, home / "tls" / "ca.pem"
            big, small = PrivateIdentity.generate("mlkem768-x25519"), PrivateIdentity.generate("x25519")
            for user in ("mallory", "bob"):
                H.securecomm(home, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
            Raw(port, ca).login("mallory", big, H.PASSWORD).sock.close()
            Raw(port, ca).login("bob", small, H.PASSWORD).sock.close()
            room = []
            for i in range(members):
                c = Raw(port, ca).login("mallory", big)
                c.send(P.Request(i, "join", {"room": "big"}))
                c.until(P.Result)
                room.append(c)
            bystander = Raw(port, ca).login("bob", small)
            baseline = [_rtt_ms(bystander) for _ in range(pings)]
            attacker = Raw(port, ca).login("mallory", big)
            blob = b"".join(P.encode_event(P.Request(i, "who", {"room": "big"})) for i in range(requests))
            attacker.sock.sendall(blob)
            during = [_rtt_ms(bystander) for _ in range(pings)]
            cut = False
            deadline = time.monotonic() + 30
            while not cut and time.monotonic() < deadline:
                cut = any("dropped: not reading" in line for line in server.lines)
                time.sleep(0.1)
            for c in (*room, bystander, attacker):
                c.sock.close()
        finally:
            server.stop()
    return {"members": members, "requests": requests,
            "baseline_p50_ms": statistics.median(baseline), "baseline_worst_ms": max(baseline),
            "during_p50_ms": statistics.median(during), "during_worst_ms": max(during),
            "attacker_cut_off": cut}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 members, 300 requests, 10 pings")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    result = run(16, 300, 10) if args.quick else run(MEMBERS, REQUESTS, PINGS)
    print(f"| who flood ({result['members']} ML-KEM members, {result['requests']} requests, one write) "
          "| bystander PING p50 / worst |")
    print("|---|---|")
    print(f"| baseline, no flood | {result['baseline_p50_ms']:.2f} / {result['baseline_worst_ms']:.2f} ms |")
    print(f"| during the flood | {result['during_p50_ms']:.2f} / {result['during_worst_ms']:.2f} ms |")
    print(f"attacker cut off: {result['attacker_cut_off']}")
    print("wrote", write_json("who-flood", {"quick": args.quick, **result}, args.json))


if __name__ == "__main__":
    main()
