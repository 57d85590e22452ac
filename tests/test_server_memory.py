"""The server gives Argon2id's memory back after password logins (issue 16: idle server RSS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serverproc import ServerProc, add_user, login, sc

MIB_KIB = 1024
#: One Argon2id hash uses 19 MiB (store/passwords.py). Before the fix each of the two hashing
#: threads kept one in its heap; a bound well under one hash still leaves room for the pages that
#: a few logins touch (sessions, SQLite cache, lazily imported modules).
GROWTH_BOUND_KIB = 12 * MIB_KIB


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read a process's RSS")
def test_password_logins_leave_no_argon2_memory_behind(tmp_path: Path) -> None:
    srv_home = tmp_path / "srv"
    assert sc(srv_home, "certgen").returncode == 0
    srv = ServerProc(srv_home).start()
    try:
        assert srv.proc is not None
        add_user(srv_home, "alice")
        assert login(tmp_path / "alice", srv, "alice").returncode == 0  # the first: lazy imports, caches
        before = rss_kib(srv.proc.pid)
        for _ in range(3):
            r = login(tmp_path / "alice", srv, "alice")  # again: a password check each time
            assert r.returncode == 0, r.stderr
        grown = rss_kib(srv.proc.pid) - before
        assert grown < GROWTH_BOUND_KIB, f"RSS grew by {grown} KiB over three password logins"
    finally:
        srv.stop()
