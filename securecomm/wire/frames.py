"""Length-prefixed frames.

    frame = length u32 (big-endian) || payload          (length = len(payload))
    payload = type u8 || body

A frame's declared length is checked against the limit before a single byte
of its payload is buffered, so a peer can never make us hold more than
`max_frame + 4` bytes for one connection.
"""

from __future__ import annotations

import struct

from securecomm.errors import FrameTooLarge, OversizedError, RemoteProtocolError

#: Default largest frame payload: 1 MiB. Big enough for one maximum envelope
#: (1 MiB - 4 KiB, see crypto/envelope.py) plus the frame's own fields; small
#: enough that 1,000 connections each mid-frame stay within ~1 GiB.
MAX_FRAME_SIZE = 1024 * 1024
#: Smallest limit an operator may configure: a hello or a login must fit.
MIN_FRAME_SIZE = 4096
#: Largest frame either side accepts before LOGIN_OK. The biggest legitimate
#: pre-login frame is a LOGIN_PASSWORD that registers an ML-KEM-768 identity
#: (about 2.8 KiB with a long password); 16 KiB leaves room for longer
#: passwords and larger keys, while a stranger who never logs in can make the
#: server buffer at most this much, not a whole 1 MiB frame (issue 9).
PRELOGIN_MAX_FRAME = 16 * 1024
_LEN = struct.Struct(">I")
HEADER_SIZE = _LEN.size


def encode_frame(payload: bytes, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    return encode_frame_parts((payload,), max_frame)


def encode_frame_parts(parts: tuple[bytes, ...], max_frame: int = MAX_FRAME_SIZE) -> bytes:
    """encode_frame of the parts joined, copying each once (a file chunk's data is 256 KiB)."""
    n = sum(map(len, parts))
    if n > max_frame:
        raise OversizedError(f"frame of {n} bytes is larger than the limit of {max_frame}")
    return b"".join((_LEN.pack(n), *parts))


class FrameDecoder:
    """Feed bytes with receive_data(); take whole payloads with next_frame()."""

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read

    def receive_data(self, data: bytes) -> None:
        self._buf += data
        if self._need is None and len(self._buf) >= HEADER_SIZE:
            self._check_header()

    def _check_header(self) -> None:
        (n,) = _LEN.unpack_from(self._buf)
        if n > self.max_frame:
            raise FrameTooLarge(f"peer announced a frame of {n} bytes; the limit is {self.max_frame}")
        if n == 0:
            raise RemoteProtocolError("empty frame")
        self._need = n

    def next_frame(self) -> bytes | None:
        # The next header is checked here, not as soon as the previous frame was
        # taken: the caller may raise max_frame in between (after LOGIN_OK), and a
        # frame that follows in the same read must be judged by the new limit.
        if self._need is None and len(self._buf) >= HEADER_SIZE:
            self._check_header()
        if self._need is None:
            return None
        end = HEADER_SIZE + self._need
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:  # one copy, not a bytearray slice and then bytes of it
            payload = bytes(view[HEADER_SIZE:end])
        del self._buf[:end]
        self._need = None
        return payload

    @property
    def partial(self) -> bool:
        """True while part of a frame is buffered (used for mid-frame stall timeouts)."""
        return bool(self._buf)

    @property
    def buffered(self) -> int:
        return len(self._buf)
