"""The one clock helper: wall-clock milliseconds, as carried in envelope headers and receipts."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (integer arithmetic, so no float rounding)."""
    return time.time_ns() // 1_000_000
