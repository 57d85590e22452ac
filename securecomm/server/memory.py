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


#: glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD = -3).
_M_MMAP_THRESHOLD = -3
#: Blocks at least this large get their own mapping, handed back to the system when freed. Above
#: every frame (max_frame 1 MiB) and the 256 KiB read buffer, which stay in the heap and are reused;
#: below an Argon2id hash's 19 MiB (store/passwords.py). glibc's default threshold is dynamic: after
#: the first 19 MiB block is freed it rises to 19 MiB, so every later hash comes from the heap of
#: the thread that ran it and stays there: an idle server that had checked two passwords held
#: ~87 MiB of RSS instead of ~47 (benchmarks/RESULTS.md, issue 16).
MMAP_THRESHOLD = 4 * 1024 * 1024


def give_back_large_blocks() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD (which also stops it moving), so that large
    short-lived blocks such as Argon2id's memory go back to the system when freed. Process-wide;
    True if set (False where mallopt does not exist: musl, macOS)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
