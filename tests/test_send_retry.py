"""`securecomm send` survives a server restart or a dropped connection while its message is in flight:
it reconnects, resends the same envelope once, and the message is stored exactly once.

The client talks to the real server through a real TCP relay (TLS passes through it end to end) that
interferes with one connection at a known point: it holds the message so that it is in flight when the
server shuts down, or it drops the receipt after the server stored the message.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from tests.conftest import ENTRY
from tests.serverproc import ServerProc, users_logged_in


class FileLoggedServer(ServerProc):
    """A ServerProc whose log goes to a file: a line is readable as soon as the server wrote it, which is
    before it sends its next bytes (a pipe drained by a thread could lag behind them)."""

    def start(self, timeout: float = 30) -> FileLoggedServer:
        self.log_path = self.home.parent / f"{self.home.name}.log"
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        port_args = ["--port", str(self.port or 0)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([ENTRY, "--home", str(self.home), "serve", *port_args, *self.extra],
                                         stderr=log, stdout=subprocess.DEVNULL)
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", self.wait_log(r"listening on \S+", timeout))
                        .group(0).rsplit(":", 1)[1])
        return self

    @property
    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")


class Relay:
    """A TCP relay to the server that trips once, on the `nth` chunk the client sends after its login.

    action "hold": that chunk is not forwarded (the message is in flight when the server stops);
    action "cut": it is forwarded, and the server's answer (the receipt) is dropped with the connection.
    `every`: trip on every connection, not only the first. New connections wait while `down` is set.
    `at_least`: count only chunks of at least that many bytes (requests written together may leave in one
    chunk or two: a message's envelope is what is large).
    """

    def __init__(self, srv: FileLoggedServer, user: str, nth: int, action: str, every: bool = False,
                 at_least: int = 0) -> None:
        self.srv, self.user, self.nth, self.action, self.every = srv, user, nth, action, every
        self.at_least = at_least
        self.tripped = threading.Event()
        self.trips = 0
        self.up = threading.Event()
        self.up.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _logged_in(self) -> int:
        return len(re.findall(rf"user={self.user} logged in", self.srv.log))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if not self.up.wait(60):
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.srv.port), timeout=60)
        except OSError:  # no server: the client sees its connection closed
            _close(client)
            return
        self._socks += [client, upstream]
        armed = self.every or self.trips == 0
        logins_before = self._logged_in()
        state = {"sent": 0, "cut": False}

        def up() -> None:  # client -> server
            while data := _recv(client):
                if armed and self._logged_in() > logins_before and len(data) >= self.at_least:
                    state["sent"] += 1
                    if state["sent"] == self.nth:
                        self.trips += 1
                        if self.action == "hold":
                            self.tripped.set()
                            continue
                        state["cut"] = True
                with contextlib.suppress(OSError):
                    upstream.sendall(data)
            _close(upstream)

        def down() -> None:  # server -> client
            while data := _recv(upstream):
                if state["cut"]:
                    _close(client)
                    _close(upstream)
                    self.tripped.set()
                    return
                with contextlib.suppress(OSError):
                    client.sendall(data)
            _close(client)

        threading.Thread(target=up, daemon=True).start()
        down()

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            _close(s)


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


@pytest.fixture
def world(tmp_path):
    srv = FileLoggedServer(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path)
    yield srv, homes
    srv.stop(signal.SIGKILL)


def send_via(relay: Relay, home, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([ENTRY, "--home", str(home), "send", "--server", f"localhost:{relay.port}",
                             "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def rows(srv, sql: str) -> list[tuple]:
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def restart_while_held(srv: FileLoggedServer, relay: Relay) -> None:
    """The message is in flight (held); the server shuts down (SIGTERM) and comes back on its port."""
    assert relay.tripped.wait(60), "the relay never saw the message"
    relay.up.clear()  # reconnects wait here, as they would be refused while no server listens
    assert srv.stop(signal.SIGTERM) == 0
    srv.start()
    relay.up.set()


# -- plain send (to the server) -------------------------------------------------------------
def test_send_in_flight_while_the_server_restarts_is_resent_and_stored_once(world):
    srv, homes = world
    relay = Relay(srv, "alice", nth=1, action="hold")
    try:
        proc = send_via(relay, homes["alice"], "survives a restart")
        restart_while_held(srv, relay)
        out, err = proc.communicate(timeout=90)
    finally:
        relay.close()
    assert proc.returncode == 0, err
    assert b"server is shutting down; reconnecting to send the same message again" in err
    receipt = json.loads(out)
    assert receipt["status"] == "delivered" and receipt["duplicate"] is False
    assert rows(srv, "SELECT lower(hex(msg_id)) FROM messages") == [(receipt["id"],)]


def test_receipt_lost_after_the_store_is_answered_with_the_original_receipt(world):
    srv, homes = world
    relay = Relay(srv, "alice", nth=1, action="cut")
    try:
        proc = send_via(relay, homes["alice"], "stored before the drop")
        out, err = proc.communicate(timeout=90)
    finally:
        relay.close()
    assert relay.tripped.is_set()
    assert proc.returncode == 0, err
    assert b"reconnecting to send the same message again" in err
    receipt = json.loads(out)
    assert receipt["duplicate"] is True  # the same bytes: the server knew the id and did not store it again
    assert rows(srv, "SELECT lower(hex(msg_id)) FROM messages") == [(receipt["id"],)]


def test_resends_only_once(world):
    srv, homes = world
    relay = Relay(srv, "alice", nth=1, action="cut", every=True)
    try:
        proc = send_via(relay, homes["alice"], "cut twice")
        _, err = proc.communicate(timeout=90)
    finally:
        relay.close()
    assert proc.returncode == 7, err
    assert relay.trips == 2  # the first copy and exactly one resend
    assert err.count(b"reconnecting") == 1
    assert err.startswith(b"securecomm: warning:") and b"securecomm: error:" in err and b"Traceback" not in err
    assert len(rows(srv, "SELECT msg_id FROM messages")) == 1


def test_retry_ends_with_the_timeout_when_the_server_does_not_come_back(world):
    srv, homes = world
    relay = Relay(srv, "alice", nth=1, action="hold")
    try:
        proc = send_via(relay, homes["alice"], "--timeout", "3", "into the void")
        assert relay.tripped.wait(60)
        relay.up.clear()  # the server never comes back: reconnects hang as on a dead network
        assert srv.stop(signal.SIGTERM) == 0
        _, err = proc.communicate(timeout=60)
    finally:
        relay.up.set()
        relay.close()
    assert proc.returncode == 7, err
    assert b"reconnecting" in err
    assert b"securecomm: error: no receipt from the server within 3s" in err
    assert b"Traceback" not in err
    srv.start()


def test_no_retry_when_the_server_is_not_there(world):
    srv, homes = world
    srv.stop(signal.SIGTERM)
    t0 = time.monotonic()
    r = subprocess.run([ENTRY, "--home", str(homes["alice"]), "send", "nobody listens"], capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 7
    assert b"reconnecting" not in r.stderr
    assert time.monotonic() - t0 < 30  # fails at once, does not wait out --timeout (30 s)
    srv.start()


# -- send --to (end to end) -----------------------------------------------------------------
@pytest.mark.parametrize("action", ["hold", "cut"])
def test_direct_send_survives_restart_or_drop_and_arrives_once(world, action):
    srv, homes = world
    # after login the prekey claim and our own device list go together (one chunk or two, small), then the
    # message: the first chunk of 1,000 bytes or more (a version-2 envelope to ML-KEM-768+X25519 is ~1.3 KB)
    relay = Relay(srv, "alice", nth=1, action=action, at_least=1000)
    try:
        proc = send_via(relay, homes["alice"], "--to", "bob", "exactly once, please")
        if action == "hold":
            restart_while_held(srv, relay)
        out, err = proc.communicate(timeout=90)
    finally:
        relay.close()
    assert proc.returncode == 0, err
    assert b"reconnecting to send the same message again" in err
    assert json.loads(out)["duplicate"] is (action == "cut")
    r = subprocess.run([ENTRY, "--home", str(homes["bob"]), "inbox", "--json"], capture_output=True, timeout=60,
                       check=False)
    assert [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["exactly once, please"]


# -- the policy, without sockets --------------------------------------------------------------
def test_shutting_down_is_a_retryable_network_error():
    from securecomm.client.connection import error_from
    from securecomm.client.sending import retryable
    from securecomm.errors import ShuttingDownError
    from securecomm.wire import protocol as P

    err = error_from(P.Error(int(P.ErrorCode.SHUTTING_DOWN), "server is shutting down", True))
    assert isinstance(err, ShuttingDownError) and err.exit_code == 7
    assert retryable(err)


@pytest.mark.parametrize("make", ["tls", "refused"])
def test_errors_that_would_not_heal_are_not_retried(make):
    import asyncio

    from securecomm.client.sending import OneRetry
    from securecomm.errors import RefusedError, TLSError

    calls, warnings = [], []
    retry = OneRetry(30, warnings.append)
    retry.logged_in = True

    async def attempt():
        calls.append(1)
        raise TLSError("certificate changed") if make == "tls" else RefusedError("server: rate limit exceeded")

    with pytest.raises(TLSError if make == "tls" else RefusedError):
        asyncio.run(retry.run(attempt))
    assert calls == [1] and warnings == []
