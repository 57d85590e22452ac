"""Giving memory back to the operating system after many connections close (issue 9).

Every connection's TLS state (OpenSSL's buffers, asyncio's 32 KiB receive
buffer) comes from malloc. When a burst of connections ends, glibc keeps the
freed pages in its heap: after 150 strangers came and went the server's RSS
stayed ~12 MiB up (benchmarks/prelogin_flood.py). malloc_trim(0) hands free
pages back. It walks the heap, so it runs only after TRIM_AFTER_CLOSES
connections have closed, and at most once per TRIM_DELAY seconds. Where
malloc_trim does not exist (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

#: Closed connections that make a trim worth its cost (a heap walk of a few ms).
TRIM_AFTER_CLOSES = 64
#: Seconds to wait before trimming, so that one burst of closes costs one trim.
TRIM_DELAY = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class Trimmer:
    def __init__(self) -> None:
        self.closed = 0
        self.trims = 0
        self._scheduled = False
        self._trim: Callable[[int], int] | None = None
        self._looked_up = False

    def connection_closed(self) -> None:
        self.closed += 1
        if self._scheduled or self.closed < TRIM_AFTER_CLOSES:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_later(TRIM_DELAY, self._run)

    def _run(self) -> None:
        self._scheduled, self.closed = False, 0
        if not self._looked_up:
            self._trim, self._looked_up = _malloc_trim(), True
        if self._trim is not None:
            self._trim(0)
            self.trims += 1
