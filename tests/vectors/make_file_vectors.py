"""Regenerate files-v1.json: the file-transfer frames and the file notice (docs/PROTOCOL.md 4.4).

python -m tests.vectors.make_file_vectors

Everything here is deterministic: each `frame` (a whole frame, length prefix
included) must be reproduced byte for byte from its fields; each `bad` payload
must be refused as a malformed frame (BAD_FRAME). `offers` are file_offer
arguments with the server's verdict; `stream_sizes` the exact size of the
stream sealing a body of each length to each suite (what a sender offers
before sealing), checked against streams sealed here.
"""

from __future__ import annotations

import json
from pathlib import Path

from securecomm.crypto import stream
from securecomm.crypto.identity import PrivateIdentity
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
                "size": notice.size, "stream_size": notice.stream_size, "early": False}]
    for why, text in (("a folder in the name", notice.encode().replace(b"report 2026.pdf", b"../x")),
                      ("a key of 31 bytes", notice.encode().replace(bytes(range(64, 96)).hex().encode(),
                                                               bytes(range(64, 95)).hex().encode())),
                      ("a negative size", notice.encode().replace(b'"size":300000', b'"size":-1')),
                      ("a control character in the name", notice.encode().replace(b"report", b"rep\\u001bort"))):
        notices.append({"expect": "bad format", "why": why, "body": text.hex()})
    # An early notice (cut-through, 4.4): sent before sealing ended, so without either digest.
    early = FileNotice(FILE_ID, "report 2026.pdf", 300_000, b"", 300_342, b"", bytes(range(64, 96)))
    notices.append({"expect": "ok", "why": "early: no digests", "body": early.encode().hex(), "id": FILE_ID.hex(),
                    "name": early.name, "size": early.size, "stream_size": early.stream_size, "early": True})
    one = early.encode().replace(b'"stream_size"', b'"sha256":"' + bytes(range(32)).hex().encode() + b'","stream_size"')
    notices.append({"expect": "bad format", "why": "sha256 without stream_sha256", "body": one.hex()})
    digest = bytes(range(32, 64)).hex()
    offers = [  # file_offer's arguments: what the server takes, and whether it checks a digest at the end
        {"why": "sealing while uploading: the size alone", "args": {"to": "bob", "size": 300_342},
         "expect": "ok", "checks_digest": False},
        {"why": "sealed first (a pipe): with the ciphertext's SHA-256", "args": {"to": "bob", "size": 300_342,
                                                                                "sha256": digest},
         "expect": "ok", "checks_digest": True},
        {"why": "resuming", "args": {"to": "bob", "size": 300_342, "file_id": FILE_ID.hex()},
         "expect": "ok", "checks_digest": False},
        {"why": "a digest of 31 bytes", "args": {"to": "bob", "size": 300_342, "sha256": digest[:62]},
         "expect": "file-bad-args"},
        {"why": "a digest that is not hex", "args": {"to": "bob", "size": 300_342, "sha256": "zz" * 32},
         "expect": "file-bad-args"},
        {"why": "no size", "args": {"to": "bob"}, "expect": "file-bad-args"},
    ]
    # The exact stream size a sender offers before sealing (2.6), checked here against real streams.
    sizes = []
    for kem in ("mlkem768-x25519", "x25519", "p256"):
        me, to = PrivateIdentity.generate("x25519"), PrivateIdentity.generate(kem)
        for length in (0, 1, stream.CHUNK_SIZE, stream.CHUNK_SIZE + 1, 300_000):
            real = sum(len(p) for p in stream.seal([bytes(length)] if length else [], me, to.public))
            assert real == stream.sealed_size(length, kem)
            sizes.append({"kem": kem, "body_length": length, "stream_size": real})
    # version 2 (2.6.1): no HPKE part, whatever the recipient's suite (`kem` "version-2")
    me = PrivateIdentity.generate("x25519")
    for length in (0, 1, stream.CHUNK_SIZE, stream.CHUNK_SIZE + 1, 300_000):
        real = sum(len(p) for p in stream.seal_detached([bytes(length)] if length else [], me, bytes(32), bytes(32)))
        assert real == stream.sealed_size_detached(length)
        sizes.append({"kem": "version-2", "body_length": length, "stream_size": real})
    out = Path(__file__).parent / "files-v1.json"
    out.write_text(json.dumps({"note": "docs/PROTOCOL.md 4.4", "frames": frames, "bad": bad, "notices": notices,
                               "offers": offers, "stream_sizes": sizes}, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
