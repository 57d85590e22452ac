"""Clients with several servers (issue 13): `--server a:7443,b:7443` is saved in the profile, a refused
connection moves on to the next relay, and every relay is held to the same CA (no trust anew)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cluster import free_port
from tests.serverproc import PASSWORD, ServerProc, add_user, sc


@pytest.fixture
def relays(tmp_path: Path):
    """Relay A with alice logged in through the list "A,B"; relay B: a copy of A's home (one CA, one
    server identity, the accounts) on a port chosen in advance, started once A is stopped."""
    a = ServerProc(tmp_path / "a").start()
    b = ServerProc(tmp_path / "b")
    b.port = free_port()
    add_user(a.home, "alice")
    servers = f"{a.address},localhost:{b.port}"
    r = sc(tmp_path / "alice", "user", "login", "alice", "--server", servers, "--ca", str(a.home / "tls" / "ca.pem"),
           "--password-stdin", input=(PASSWORD + "\n").encode())
    assert r.returncode == 0, r.stderr
    a.stop()  # the copy is taken at rest: alice's registered key is in it
    shutil.copytree(a.home, b.home)
    yield a, b, servers, tmp_path / "alice"
    for relay in (a, b):
        relay.stop()


def test_profile_keeps_the_list_and_a_refused_relay_fails_over_to_the_next(relays):
    _a, b, servers, alice = relays
    assert json.loads((alice / "profile.json").read_text())["server"] == servers
    b.start()  # A stays down: its port refuses
    r = sc(alice, "status")
    assert r.returncode == 0, r.stderr
    assert f"localhost:{b.port}" in r.stdout.decode()
    b.wait_log(r"logged in|login")


def test_a_relay_with_another_ca_is_refused_not_trusted(relays, tmp_path: Path):
    a, _b, _, alice = relays
    stranger = ServerProc(tmp_path / "stranger").start()  # its own, different CA
    try:
        r = sc(alice, "status", "--server", f"{a.address},{stranger.address}")
        assert r.returncode == 8, r.stderr  # a TLS error: the failover never trusts a new CA
        assert b"Traceback" not in r.stderr
    finally:
        stranger.stop()


def test_every_relay_down_reports_the_last_refusal(relays):
    _a, b, _servers, alice = relays
    r = sc(alice, "status")
    assert r.returncode == 7, r.stderr
    assert f"localhost:{b.port}" in r.stderr.decode()  # the last one tried
