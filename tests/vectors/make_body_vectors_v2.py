"""Regenerate bodies-v2.json: what a version-2 envelope carries inside (docs/PROTOCOL.md 6.6).

python -m tests.vectors.make_body_vectors_v2

`direct`: the body of a direct message; `sender_key`: the body of a ROOM_KEY
(a room sender key). No key is involved, so every case is reproduced byte
for byte. `read` cases give the account whose list names the sending device
(`sender`) and, for direct bodies, the reader's own name (`reader`), with
what the reader takes or the error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from securecomm.client import devicemail as M
from securecomm.crypto.room import SENDER_KEY_MAGIC, SenderKey

OUT = Path(__file__).resolve().parent / "bodies-v2.json"


def direct() -> dict[str, Any]:
    encode: list[dict[str, Any]] = [
        {"writer": "alice", "conversation": "bob", "text": "hello bob"},
        {"writer": "alice", "conversation": "alice", "text": "a note to myself"},
        {"writer": "bob", "conversation": "alice", "text": ""},
    ]
    for case in encode:
        case["body"] = M.encode_body(case["writer"], case["conversation"], case["text"].encode()).hex()
    scm3 = M.encode_body("alice", "bob", b"hi").hex()
    scm2 = (M.BODY_MAGIC_V2 + b"\x03bob" + b"hi").hex()
    read = [
        {"body": scm3, "sender": "alice", "reader": "bob", "shows": {"conversation": "bob", "text": "hi"}},
        {"body": scm3, "sender": "alice", "reader": "alice", "shows": {"conversation": "bob", "text": "hi"},
         "note": "the writer's own copy on another of its devices: shown as sent to bob"},
        {"body": scm2, "sender": "alice", "reader": "bob", "shows": {"conversation": "bob", "text": "hi"},
         "note": "SCM2 (no writer) is still read"},
        {"body": scm2, "sender": "alice", "reader": "bob", "writer_required": True, "error": "no writer",
         "note": "SCM2 from a device the reader has seen write SCM3: refused"},
        {"body": scm3, "sender": "dave", "reader": "bob", "error": "written by another account",
         "note": "a server listed alice's device under dave: refused"},
        {"body": scm3, "sender": "alice", "reader": "carol", "error": "another conversation"},
        {"body": "53434d3403616c696365", "sender": "alice", "reader": "bob", "error": "bad format",
         "note": "unknown magic SCM4"},
        {"body": "53434d3305616c6963", "sender": "alice", "reader": "bob", "error": "bad format",
         "note": "truncated writer"},
    ]
    return {"encode": encode, "read": read}


def sender_key() -> dict[str, Any]:
    key = SenderKey(bytes.fromhex("0a0b0c0d"), bytes(range(32)), 7)
    sck2, sck1 = key.encode("lobby", "alice"), key.encode("lobby")
    common = {"key_id": key.key_id.hex(), "chain_key": key.chain_key.hex(), "iteration": key.iteration}
    return {
        "encode": [{"writer": "alice", "room": "lobby", **common, "body": sck2.hex()},
                   {"writer": None, "room": "lobby", **common, "body": sck1.hex(),
                    "note": "SCK1 (no writer): version-1 rooms, and read from clients before SCK2"}],
        "read": [
            {"body": sck2.hex(), "sender": "alice", "takes": {"room": "lobby", **common}},
            {"body": sck1.hex(), "sender": "alice", "takes": {"room": "lobby", **common}},
            {"body": sck2.hex(), "sender": "dave", "error": "written by another account",
             "note": "a server listed alice's device under dave: refused"},
            {"body": (SENDER_KEY_MAGIC + b"\x05lobby").hex(), "sender": "alice", "error": "bad format"},
        ],
    }


def main() -> None:
    OUT.write_text(json.dumps({"note": (__doc__ or "").split("\n\n", 2)[2].strip(), "direct": direct(),
                               "sender_key": sender_key()}, indent=2) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
