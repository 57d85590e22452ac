"""Regenerate files-v1.json: the file-transfer frames and the file notice (docs/PROTOCOL.md 4.4).

python -m tests.vectors.make_file_vectors

Everything here is deterministic: each `frame` (a whole frame, length prefix
included) must be reproduced byte for byte from its fields; each `bad` payload
must be refused as a malformed frame (BAD_FRAME).
"""

from __future__ import annotations

import json
from pathlib import Path

from securecomm.wire import protocol as P
from securecomm.wire.files import FileAck, FileData, FileNotice, FilePut

FILE_ID = bytes(range(0xA0, 0xB0))


def main() -> None:
    frames = [
        {"type": "FILE_PUT", "file_id": FILE_ID.hex(), "offset": 0, "data": b"SCS1 first bytes".hex(),
         "frame": P.encode_event(FilePut(FILE_ID, 0, b"SCS1 first bytes")).hex()},
        {"type": "FILE_ACK", "file_id": FILE_ID.hex(), "received": 262144, "complete": False,
         "frame": P.encode_event(FileAck(FILE_ID, 262144, False)).hex()},
        {"type": "FILE_ACK", "file_id": FILE_ID.hex(), "received": 300000, "complete": True,
         "frame": P.encode_event(FileAck(FILE_ID, 300000, True)).hex()},
        {"type": "FILE_DATA", "file_id": FILE_ID.hex(), "offset": 262144, "data": b"tail".hex(),
         "frame": P.encode_event(FileData(FILE_ID, 262144, b"tail")).hex()},
    ]
    bad = [
        {"why": "FILE_PUT without data", "payload": (b"\x15" + FILE_ID + bytes(8)).hex()},
        {"why": "FILE_PUT offset of 2^63", "payload": (b"\x15" + FILE_ID + b"\x80" + bytes(7) + b"x").hex()},
        {"why": "FILE_ACK of 24 bytes", "payload": (b"\x95" + FILE_ID + bytes(8)).hex()[:-2]},
        {"why": "FILE_ACK complete flag 2", "payload": (b"\x95" + FILE_ID + bytes(8) + b"\x02").hex()},
        {"why": "FILE_DATA truncated", "payload": (b"\x96" + FILE_ID[:10]).hex()},
    ]
    notice = FileNotice(FILE_ID, "report 2026.pdf", 300_000, bytes(range(32)), 300_342, bytes(range(32, 64)),
                        bytes(range(64, 96)))
    notices = [{"expect": "ok", "body": notice.encode().hex(), "id": FILE_ID.hex(), "name": notice.name,
                "size": notice.size, "stream_size": notice.stream_size}]
    for why, text in (("a folder in the name", notice.encode().replace(b"report 2026.pdf", b"../x")),
                      ("a key of 31 bytes", notice.encode().replace(bytes(range(64, 96)).hex().encode(),
                                                               bytes(range(64, 95)).hex().encode())),
                      ("a negative size", notice.encode().replace(b'"size":300000', b'"size":-1')),
                      ("a control character in the name", notice.encode().replace(b"report", b"rep\\u001bort"))):
        notices.append({"expect": "bad format", "why": why, "body": text.hex()})
    out = Path(__file__).parent / "files-v1.json"
    out.write_text(json.dumps({"note": "docs/PROTOCOL.md 4.4", "frames": frames, "bad": bad, "notices": notices},
                              indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
