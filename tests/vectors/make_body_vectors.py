"""Regenerate direct-body-v2.json: the body of a version-2 direct message (docs/PROTOCOL.md 6.6).

python -m tests.vectors.make_body_vectors

The body is the plaintext inside each envelope of a direct message; no key
is involved, so every case is reproduced byte for byte. `read` cases give
the account the reader's list names as the sending device's (`sender`) and
the reader's own name (`reader`), with what the reader shows or the error.
"""

from __future__ import annotations

import json
from pathlib import Path

from securecomm.client import devicemail as M

OUT = Path(__file__).resolve().parent / "direct-body-v2.json"


def main() -> None:
    encode = [
        {"writer": "alice", "conversation": "bob", "text": "hello bob", },
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
        {"body": scm3, "sender": "dave", "reader": "bob", "error": "written by another account",
         "note": "a server listed alice's device under dave: refused"},
        {"body": scm3, "sender": "alice", "reader": "carol", "error": "another conversation"},
        {"body": "53434d3403616c696365", "sender": "alice", "reader": "bob", "error": "bad format",
         "note": "unknown magic SCM4"},
        {"body": "53434d3305616c6963", "sender": "alice", "reader": "bob", "error": "bad format",
         "note": "truncated writer"},
    ]
    OUT.write_text(json.dumps({"note": __doc__.split("\n\n", 1)[1].strip(), "encode": encode, "read": read},
                              indent=2) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
