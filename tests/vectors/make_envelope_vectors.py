"""Regenerate envelope-v1.json (test-only keys; run from the repository root).

python tests/vectors/make_envelope_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

from securecomm.crypto import envelope as E
from securecomm.crypto.identity import PrivateIdentity


def main() -> None:
    sender, recipient = PrivateIdentity.generate("x25519"), PrivateIdentity.generate("x25519")
    body = b"hello from the worked example"
    msg_id = bytes(range(16))
    raw = E.seal(body, sender, recipient.public, msg_id=msg_id, timestamp_ms=1_764_115_200_000)
    base = {"recipient_key_pem": recipient.to_pem().decode(), "sender": sender.public.line}
    flipped = bytearray(raw)
    flipped[-1] ^= 1
    cases = [
        {**base, "expect": "ok", "envelope": raw.hex(), "body": body.hex(), "msg_id": msg_id.hex(),
         "timestamp_ms": 1_764_115_200_000},
        {**base, "expect": "bad signature", "envelope": bytes(flipped).hex()},
        {**base, "expect": "truncated", "envelope": raw[:-1].hex()},
        {**base, "expect": "trailing data", "envelope": (raw + b"\0").hex()},
        {**base, "expect": "wrong version", "envelope": (raw[:4] + b"\x09" + raw[5:]).hex()},
    ]
    out = Path(__file__).parent / "envelope-v1.json"
    out.write_text(json.dumps({"note": "test-only keys; see docs/PROTOCOL.md worked example", "cases": cases},
                              indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
