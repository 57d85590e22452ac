"""A quiet peer is kept, a vanished one is noticed, on both sides.

Server (securecomm/net/tcp.py): before, it set no TCP option, so a client whose link died silently
kept its session (and its place under --max-sessions-per-user) until --idle-timeout, or for ever
while a file_get ran. Checked in the kernel's own table: an established socket with keepalive on
has its keepalive timer armed ("tr" 2 in /proc/net/tcp), one without has no timer while quiet (0).

Client (client/connection.py KEEPALIVE_SECONDS): before, a logged-in client sent nothing while it
only waited, so the server's --idle-timeout ended every quiet `inbox --follow` and `chat` (a
"timeout: idle" warning and a reconnect every five minutes by default), and a server that stopped
answering without closing was waited on for ever.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from securecomm.client.connection import KEEPALIVE_SECONDS, Client
from securecomm.net.tcp import KEEPCNT, KEEPIDLE, KEEPINTVL, UNACKED_SECONDS, watch_peer
from securecomm.wire import protocol as P
from tests.conftest import ENTRY
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_error_table import Raw

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: TCP_KEEPIDLE and /proc/net/tcp")


@linux
def test_watch_peer_sets_keepalive_and_the_unacknowledged_bound() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
            assert watch_peer(accepted, 150.0)
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            tcp = socket.IPPROTO_TCP
            assert (accepted.getsockopt(tcp, socket.TCP_KEEPIDLE), accepted.getsockopt(tcp, socket.TCP_KEEPINTVL),
                    accepted.getsockopt(tcp, socket.TCP_KEEPCNT)) == (KEEPIDLE, KEEPINTVL, KEEPCNT)
            assert accepted.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 150_000
    # a silent peer is gone within about two minutes of its last word, a live one answers from its kernel
    assert KEEPIDLE + KEEPINTVL * KEEPCNT <= UNACKED_SECONDS


def test_watch_peer_leaves_what_is_not_tcp_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert not watch_peer(a)
    assert not watch_peer(None)


def _timer(local_port: int, remote_port: int) -> int:
    """The "tr" field of the server's end of one loopback connection, from /proc/net/tcp{,6}."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, timer = fields[1], fields[2], fields[5]
            if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                return int(timer.split(":")[0], 16)
    raise AssertionError(f"no connection :{local_port} <- :{remote_port} in the kernel's tables")


@linux
def test_the_server_watches_every_accepted_connection(tmp_path: Path) -> None:
    srv = ServerProc(tmp_path / "srv").start()
    try:
        raw = Raw(srv).start()  # a TLS handshake and a HELLO: the server has accepted it
        try:
            port = raw.sock.getsockname()[1]
            # the retransmit timer (1) shows until the client's delayed ACK of the last answer lands
            deadline = time.monotonic() + 10
            while (timer := _timer(srv.port, port)) == 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert timer == 2  # keepalive armed (before: 0, no timer while quiet)
            assert not raw.closed()  # and it serves on
        finally:
            raw.close()
    finally:
        srv.stop()


def _follow(home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([ENTRY, "--home", str(home), "inbox", "--follow"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for(srv: ServerProc, text: str, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30  # only catches a hang
    while srv.log.count(text) < count:
        assert time.monotonic() < deadline and proc.poll() is None, f"no {count} x {text!r} in the server log"
        time.sleep(0.02)


def test_a_quiet_follower_outlives_the_servers_idle_timeout(tmp_path: Path) -> None:
    srv = ServerProc(tmp_path / "srv", "--idle-timeout", "2").start()
    try:
        homes = users_logged_in(srv, tmp_path)
        logged_in = "user=bob logged in (identity key)"
        before = srv.log.count(logged_in)
        follower = _follow(homes["bob"])
        try:
            _wait_for(srv, logged_in, before + 1, follower)
            time.sleep(6)  # the condition itself: three idle timeouts of saying nothing
            r = sc(homes["alice"], "send", "--to", "bob", "--wait", "--timeout", "20", "still there?")
            assert r.returncode == 0, r.stderr
        finally:
            follower.send_signal(signal.SIGINT)
            out, err = follower.communicate(timeout=10)
        assert b"still there?" in out
        assert b"timeout" not in err, err  # before: "server: timeout: idle; reconnecting in 0.5s", 3 times
        assert "timeout (idle)" not in srv.log and srv.log.count(logged_in) == before + 1  # one session
    finally:
        srv.stop()


def test_a_follower_notices_a_server_that_stopped_answering(tmp_path: Path) -> None:
    """SIGSTOP: the server's kernel still holds the connection open, but nothing answers."""
    srv = ServerProc(tmp_path / "srv", "--idle-timeout", "2").start()
    follower = None
    try:
        homes = users_logged_in(srv, tmp_path)
        follower = _follow(homes["bob"])
        _wait_for(srv, "user=bob logged in (identity key)", 1, follower)
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            assert follower.stderr is not None
            line = follower.stderr.readline()  # the PING after a second, then REPLY_TIMEOUT (30 s) for a PONG
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        assert b"the server stopped answering (no answer to a PING in 30 s)" in line, line
        assert b"reconnecting" in line or b"resuming" in line or b"trying again" in line, line
    finally:
        if follower is not None:
            follower.kill()
            follower.communicate(timeout=10)
        srv.stop()


@pytest.mark.parametrize(("announced", "interval"), [
    (None, KEEPALIVE_SECONDS), (300, KEEPALIVE_SECONDS), (2, 1.0), (1, 0.5), (0, KEEPALIVE_SECONDS),
    (-7, KEEPALIVE_SECONDS), (10**12, KEEPALIVE_SECONDS)])
def test_the_ping_interval_follows_the_announced_idle_timeout_within_bounds(announced: int | None,
                                                                         interval: float) -> None:
    client = Client("127.0.0.1", 1, None)  # type: ignore[arg-type]  # never connects
    client.server_hello = P.ServerHello(2, "x", bytes(32), idle_timeout=announced)
    assert client.keepalive_interval() == interval
    decoded = P.decode_payload(P.encode_event(client.server_hello)[4:])
    assert isinstance(decoded, P.ServerHello) and decoded.idle_timeout == announced
