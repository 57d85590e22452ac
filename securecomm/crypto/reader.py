"""A bounds-checked reader for the fixed binary layouts of docs/PROTOCOL.md section 6.

Every read checks the length first, and `done()` refuses trailing bytes, so a
parser written with it either returns a whole structure or raises a
FormatError subclass; it never reads past the end or ignores extra input.
"""

from __future__ import annotations

import struct

from securecomm.errors import TrailingDataError, TruncatedError


class Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TruncatedError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _int(self, fmt: str, size: int) -> int:
        value: int = struct.unpack(fmt, self.take(size))[0]
        return value

    def u8(self) -> int:
        return self._int(">B", 1)

    def u16(self) -> int:
        return self._int(">H", 2)

    def u32(self) -> int:
        return self._int(">I", 4)

    def u64(self) -> int:
        return self._int(">Q", 8)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise TrailingDataError(f"{self.what} has trailing bytes")
