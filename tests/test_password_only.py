"""A password login that proves no device key (second attack round, item 1; /tmp/atk2w/pwonly_*.py).

Before: such a session was handed the account's registered key, so it was offered the account's
mail, could delete it unread with ACK, joined rooms as the owner, and stayed connected after
`user passwd --keep-key`. Now a session's identity is only a key it proved in this connection.
"""

from __future__ import annotations

import signal

import pytest

from securecomm.crypto import identity as ident
from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder
from tests.serverproc import PASSWORD, ServerProc, frame, mailbox_count, read_events, sc, tls_socket, users_logged_in
from tests.test_error_table import Raw as KeyRaw


@pytest.fixture
def server(tmp_path):
    srv = ServerProc(tmp_path / "server").start()
    yield srv
    srv.stop(signal.SIGKILL)


class Raw:
    """A raw TLS client that reads events up to a marker instead of sleeping."""

    def __init__(self, server: ServerProc) -> None:
        self.sock = tls_socket(server)
        self.dec = FrameDecoder()

    def until(self, kind: type) -> list[P.Event]:
        events: list[P.Event] = []
        while not events or not isinstance(events[-1], kind):
            while (f := self.dec.next_frame()) is not None:
                events.append(P.decode_payload(f))
                if isinstance(events[-1], kind):
                    return events
            data = self.sock.recv(65536)
            assert data, f"closed before {kind.__name__}: {events}"
            self.dec.receive_data(data)
        return events

    def ask(self, event: P.Event) -> list[P.Event]:
        """Send `event`, then a PING: everything the server queued before the PONG is returned."""
        self.sock.sendall(frame(event) + frame(P.Ping()))
        return self.until(P.Pong)[:-1]


def _password_only(server: ServerProc, name: str) -> tuple[Raw, P.LoginOk]:
    raw = Raw(server)
    raw.sock.sendall(frame(P.Hello()))
    raw.until(P.ServerHello)
    raw.sock.sendall(frame(P.LoginPassword(name, PASSWORD)))  # no identity, no proof
    ok = raw.until(P.LoginOk)[-1]
    assert isinstance(ok, P.LoginOk)
    return raw, ok


def test_a_password_only_login_gets_no_mail_and_cannot_ack_it_away(server, tmp_path):
    homes = users_logged_in(server, tmp_path)
    alice_key = ident.load(homes["alice"] / "identities" / "default.key")
    raw, ok = _password_only(server, "alice")
    assert ok.fingerprint == alice_key.public.fingerprint_text  # informational: not a key this session holds
    assert sc(homes["bob"], "send", "--to", "alice", "secret for alice").returncode == 0
    seen = raw.ask(P.Ping())  # bob's receipt and any push to alice's sessions leave in the same turn
    assert not any(isinstance(e, P.Deliver) for e in seen), seen
    assert raw.ask(P.Ack(1, P.ACK_REJECTED)) == []  # the first mailbox seq: ignored, nothing deleted
    assert mailbox_count(server) == 1
    r = sc(homes["alice"], "inbox")
    assert r.returncode == 0 and b"secret for alice" in r.stdout, r.stderr


def test_a_password_only_login_cannot_join_rooms(server, tmp_path):
    users_logged_in(server, tmp_path)
    raw, _ = _password_only(server, "alice")
    answer = raw.ask(P.Request(7, "join", {"room": "ops"}))
    assert len(answer) == 1 and isinstance(answer[0], P.Error), answer
    assert answer[0].code == P.ErrorCode.FORBIDDEN and answer[0].rid == 7 and not answer[0].fatal


def test_a_password_change_ends_password_sessions_even_with_keep_key(server, tmp_path):
    homes = users_logged_in(server, tmp_path)
    device = KeyRaw(server).start().login_key("alice", ident.load(homes["alice"] / "identities" / "default.key"))
    raw, _ = _password_only(server, "alice")
    r = sc(server.home, "user", "passwd", "alice", "--keep-key", "--password-stdin",
           input=b"another long password 123\n")
    assert r.returncode == 0, r.stderr
    events = read_events(raw.sock, timeout=20)  # the watcher polls; the server closes the connection
    assert isinstance(events[-1], P.Error) and events[-1].code == P.ErrorCode.AUTH_FAILED, events
    assert "password changed" in events[-1].message
    assert not device.closed()  # checked in the same pass: a key login stays, its key is still registered
    device.close()
