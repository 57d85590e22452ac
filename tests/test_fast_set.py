"""The `slow` marker list stays true: what it names exists, and what it leaves out starts no server."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import SLOW_FILES

HERE = Path(__file__).resolve().parent
#: What makes a test file slow: a real server or the entry point in a subprocess, or tmux.
SLOW_SIGNS = re.compile(r"tests\.serverproc|\btmux\b|\bENTRY\b|\brun_entry\b|benchmarks")


def test_every_listed_slow_file_exists():
    assert {name for name in SLOW_FILES if not (HERE / name).is_file()} == set()


def test_no_unmarked_file_starts_servers_or_tmux():
    fast = sorted(p for p in HERE.glob("test_*.py") if p.name not in SLOW_FILES and p.name != Path(__file__).name)
    assert fast, "the fast set is empty"
    assert [p.name for p in fast if SLOW_SIGNS.search(p.read_text())] == []
