"""server/memory.py: after a burst of closed connections the server hands freed heap back to the system
(malloc_trim), once per burst. The flood test in test_dos.py bounds the server's RSS from outside; its
bound has to allow glibc's variance on a shared machine, so it cannot tell the trim from its absence:
this test can, in this process, with a heap it shapes itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from securecomm.server import memory

pytestmark = pytest.mark.skipif(memory._malloc_trim() is None, reason="no malloc_trim here (not glibc)")

MIB = 1024 * 1024
#: Each block is malloc'd from the heap (above pymalloc's 512 bytes, below glibc's 128 KiB mmap threshold).
BLOCK = 16 * 1024
HEAP = 64 * MIB


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_burst_of_closes_gives_the_freed_heap_back_once(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.05)

    async def main() -> tuple[int, int, int]:
        trimmer = memory.Trimmer()
        blocks = [bytearray(BLOCK) for _ in range(HEAP // BLOCK)]  # zero-filled: the pages are resident
        pin = bytearray(BLOCK)  # above them, so that freeing them cannot shrink the heap from its top
        del blocks  # free, but still resident: glibc keeps a free hole in the middle of its heap
        held = rss_kib()
        for _ in range(memory.TRIM_AFTER_CLOSES - 1):
            trimmer.connection_closed()
        assert not trimmer._scheduled, "a trim before TRIM_AFTER_CLOSES connections closed"
        for _ in range(memory.TRIM_AFTER_CLOSES):  # one burst: the first of these schedules the only trim
            trimmer.connection_closed()
        for _ in range(200):  # the event: the trim has run (bounded: 200 x 20 ms)
            if trimmer.trims:
                break
            await asyncio.sleep(0.02)
        after = rss_kib()
        del pin
        return held, after, trimmer.trims

    held, after, trims = asyncio.run(main())
    assert trims == 1
    # the hole was 64 MiB; most of it must be gone (not all: glibc keeps what sits in its bins' headers)
    assert held - after > HEAP // 1024 // 2, f"RSS went from {held} to {after} KiB: the freed heap stayed"
