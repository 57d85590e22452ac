"""A peer that vanishes without a FIN is noticed by the kernel (securecomm/net/tcp.py).

Before: the server set no TCP option, so a client whose link died silently kept its session (and
its place under --max-sessions-per-user) until --idle-timeout, or for ever while a file_get ran.
The server-side check reads the kernel's own table: an established socket with keepalive on has
its keepalive timer armed ("tr" 2 in /proc/net/tcp), one without has no timer while quiet (0).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from securecomm.net.tcp import KEEPCNT, KEEPIDLE, KEEPINTVL, UNACKED_SECONDS, watch_peer
from tests.serverproc import ServerProc
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
