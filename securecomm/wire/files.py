"""Frames that carry a file's ciphertext to and from the server (docs/PROTOCOL.md 4.4).

    FILE_PUT   c→s  file_id (16) || offset u64 || data      append at offset (must equal what the server holds)
    FILE_ACK   s→c  file_id (16) || received u64 || complete u8
    FILE_DATA  s→c  file_id (16) || offset u64 || data      the bytes at offset, in order, to the end

The control half (offer, get, done) is REQUEST/RESULT; only the bytes travel
in binary frames, so no JSON or hex touches a file's contents.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from securecomm.wire.messages import Event, MsgType, ProtocolError

FILE_ID_SIZE = 16
_HEAD = struct.Struct(">16sQ")
_ACK = struct.Struct(">16sQB")
#: Bytes of a FILE_PUT or FILE_DATA payload that are not data: type, file_id, offset.
OVERHEAD = 1 + _HEAD.size
#: Data per FILE_PUT / FILE_DATA that clients and the server send: large enough that
#: per-frame costs vanish, small enough to interleave with other traffic and fit any
#: reasonable max_frame.
CHUNK = 256 * 1024


def chunk_size(max_frame: int) -> int:
    """Data per FILE_PUT / FILE_DATA on a connection whose frames are at most `max_frame` bytes:
    CHUNK, or less under a smaller --max-frame (its minimum, 4096, still carries 4071 bytes)."""
    return max(1, min(CHUNK, max_frame - OVERHEAD))


@dataclass(frozen=True)
class _Chunk(Event):
    """FILE_PUT and FILE_DATA share one layout: file_id (16) || offset u64 || data."""

    WHAT: ClassVar[str] = "file chunk"
    file_id: bytes
    offset: int
    data: bytes

    def encode_body(self) -> bytes:
        return _HEAD.pack(self.file_id, self.offset) + self.data

    def encode_parts(self) -> tuple[bytes, ...]:
        return _HEAD.pack(self.file_id, self.offset), self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(*_split(body, cls.WHAT))


@dataclass(frozen=True)
class FilePut(_Chunk):
    TYPE: ClassVar[MsgType] = MsgType.FILE_PUT


@dataclass(frozen=True)
class FileData(_Chunk):
    TYPE: ClassVar[MsgType] = MsgType.FILE_DATA
    WHAT: ClassVar[str] = "file data"


@dataclass(frozen=True)
class FileAck(Event):
    TYPE: ClassVar[MsgType] = MsgType.FILE_ACK
    file_id: bytes
    received: int
    complete: bool

    def encode_body(self) -> bytes:
        return _ACK.pack(self.file_id, self.received, int(self.complete))

    @classmethod
    def decode_body(cls, body: bytes) -> FileAck:
        if len(body) != _ACK.size:
            raise ProtocolError("file acknowledgement must be 25 bytes")
        file_id, received, complete = _ACK.unpack(body)
        if complete > 1:
            raise ProtocolError("bad file acknowledgement flag")
        return cls(file_id, received, bool(complete))


def _split(body: bytes, what: str) -> tuple[bytes, int, bytes]:
    if len(body) <= _HEAD.size:
        raise ProtocolError(f"{what} is truncated or empty")
    file_id, offset = _HEAD.unpack_from(body)
    if offset >= 1 << 63:
        raise ProtocolError(f"{what} offset is out of range")
    return file_id, offset, bytes(body[_HEAD.size :])


# -- the file notice: the body of the DIRECT that tells the recipient about a file --------
NOTICE_PREFIX = b"securecomm/v1/file\n"
MAX_NAME_BYTES = 255
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class FileNotice:
    """What the recipient needs to fetch, check and open a file (docs/PROTOCOL.md 4.4). `sha256` and
    `stream_sha256` are b"" in an early notice, sent before sealing ended (see `early`)."""

    file_id: bytes
    name: str
    size: int
    sha256: bytes
    stream_size: int
    stream_sha256: bytes
    key: bytes

    def encode(self) -> bytes:
        import json

        o: dict[str, object] = {"id": self.file_id.hex(), "name": self.name, "size": self.size}
        if self.sha256:
            o["sha256"] = self.sha256.hex()
        o["stream_size"] = self.stream_size
        if self.stream_sha256:
            o["stream_sha256"] = self.stream_sha256.hex()
        o["key"] = self.key.hex()
        return NOTICE_PREFIX + json.dumps(o, separators=(",", ":")).encode()

    @property
    def early(self) -> bool:
        """Sent before the file was sealed (cut-through, docs/PROTOCOL.md 4.4): no digests; the stream's
        signed trailer carries the plaintext's SHA-256, which the recipient checks instead."""
        return not self.sha256

    @staticmethod
    def is_notice(body: bytes) -> bool:
        return body.startswith(NOTICE_PREFIX)

    @classmethod
    def decode(cls, body: bytes) -> FileNotice:
        """Parse a notice; every field checked for type, length and range (a peer wrote it)."""
        from securecomm.wire.messages import _load_json

        o = _load_json(body[len(NOTICE_PREFIX) :])
        name = o.get("name")
        if not isinstance(name, str) or not valid_name(name):
            raise ProtocolError("file notice has a bad name")
        sizes = [o.get("size"), o.get("stream_size")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 63 for n in sizes):
            raise ProtocolError("file notice has a bad size")
        digests = [o.get("sha256"), o.get("stream_sha256")]
        if (digests[0] is None) != (digests[1] is None):  # both or neither (an early notice: 4.4)
            raise ProtocolError("file notice has one digest without the other")
        sha256, stream_sha256 = ((_hex(o, "sha256", 32), _hex(o, "stream_sha256", 32)) if digests[0] is not None
                                 else (b"", b""))
        return cls(_hex(o, "id", FILE_ID_SIZE), name, o["size"], sha256, o["stream_size"], stream_sha256,
                   _hex(o, "key", 32))


def valid_name(name: str) -> bool:
    """A base name only: no folder part, no NUL, no control characters, not . or .."""
    encoded = name.encode("utf-8", "surrogatepass")
    return (0 < len(encoded) <= MAX_NAME_BYTES and "/" not in name and "\\" not in name
            and name not in (".", "..") and all(ch.isprintable() for ch in name))


def _hex(o: dict[str, object], key: str, size: int) -> bytes:
    value = o.get(key)
    if not isinstance(value, str) or len(value) != 2 * size or not set(value) <= _HEX:
        raise ProtocolError(f"file notice has a bad {key}")
    return bytes.fromhex(value)
