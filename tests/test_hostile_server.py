"""A hostile server: every string it sends is escaped before a terminal sees it, or refused.

The server here is tiny and fake in what it says, but real in how: TLS 1.3 with
a certificate from `securecomm certgen`, frames and messages from
securecomm.wire, on an ephemeral loopback port. The CLI under test is the
installed entry point.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from securecomm.crypto import identity as ident
from securecomm.net.tls import server_context
from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder
from tests.conftest import run_entry

EVIL = "\x1b]0;pwned\x07\x1b[2J"
#: Bytes a terminal obeys: ESC, BEL, CSI (as UTF-8 of U+009B), and the other C0 controls bar newline.
RAW_CONTROLS = [b"\x1b", b"\x07", "\x9b".encode(), b"\r"]
MAX_CONNECTIONS = 8  # each test makes one or two; a bound so that a bug cannot spin forever


class HostileServer:
    """Speaks the wire protocol over real TLS and answers with hostile names."""

    def __init__(self, home: Path, *, login_name: str) -> None:
        self.ca = home / "tls" / "ca.pem"
        self.context = server_context(home / "tls" / "server.pem", home / "tls" / "server.key")
        self.identity = ident.PrivateIdentity.generate("x25519")
        self.peer = ident.PrivateIdentity.generate("x25519").public  # a real key under an evil name
        self.login_name = login_name
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        self.listener.close()
        self.thread.join(10)

    def _serve(self) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(raw,), daemon=True).start()

    def _session(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                decoder = FrameDecoder()
                while data := tls.recv(65536):
                    decoder.receive_data(data)
                    while (frame := decoder.next_frame()) is not None:
                        for reply in self.answer(P.decode_payload(frame)):
                            tls.sendall(P.encode_event(reply))
        except (OSError, ssl.SSLError):
            return

    def answer(self, ev: Any) -> list[Any]:
        if isinstance(ev, P.Hello):
            return [P.ServerHello(P.SUPPORTED_VERSIONS[0], self.identity.public.line, os.urandom(32))]
        if isinstance(ev, P.LoginPassword | P.LoginKey):
            return [P.LoginOk(self.login_name, "admin" + EVIL, "SHA256:" + EVIL)]
        if isinstance(ev, P.Request) and ev.op == "user_list":
            return [P.Result(ev.rid, [{"name": "mallory" + EVIL, "role": "user" + EVIL, "created": 0,
                                       "last_login": "1" + EVIL, "locked": False, "fingerprint": EVIL}])]
        if isinstance(ev, P.Request) and ev.op == "lookup":
            return [P.Result(ev.rid, {"user": "bob" + EVIL, "identity": self.peer.line})]
        return []


@pytest.fixture(scope="module")
def server_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hostile")
    result = run_entry("--home", str(home), "certgen")
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture
def hostile(server_home):
    def start(login_name: str) -> HostileServer:
        server = HostileServer(server_home, login_name=login_name)
        started.append(server)
        return server

    started: list[HostileServer] = []
    yield start
    for server in started:
        server.close()


def assert_no_raw_controls(data: bytes) -> None:
    for control in RAW_CONTROLS:
        assert control not in data, (control, data)


def login(home: Path, server: HostileServer, *extra: str):
    return run_entry("--home", str(home), "user", "login", "alice", "--server", server.address, "--ca",
                     str(server.ca), "--password-stdin", *extra, input=b"correct horse battery\n")


def test_login_refuses_a_hostile_user_name_and_saves_nothing(hostile, home):
    server = hostile("alice" + EVIL)
    result = login(home, server)
    assert result.returncode == 6, result.stderr
    assert b"securecomm: error: the server sent an invalid user name" in result.stderr
    assert_no_raw_controls(result.stdout + result.stderr)
    assert not (home / "profile.json").exists()
    assert not (home / "identities" / "default.key").exists()  # the new identity was not kept either


def test_login_escapes_the_role_and_fingerprint_it_prints(hostile, home):
    server = hostile("alice")
    result = login(home, server)
    assert result.returncode == 0, result.stderr
    assert b"logged in as alice (admin\\x1b]0;pwned\\x07" in result.stdout
    assert_no_raw_controls(result.stdout + result.stderr)
    assert_no_raw_controls((home / "profile.json").read_bytes())


def test_remote_user_list_is_escaped(hostile, home):
    server = hostile("alice")
    assert login(home, server).returncode == 0
    result = run_entry("--home", str(home), "user", "list", "--remote")
    assert result.returncode == 0, result.stderr
    assert b"mallory\\x1b]0;pwned" in result.stdout
    assert_no_raw_controls(result.stdout + result.stderr)
    as_json = run_entry("--home", str(home), "user", "list", "--remote", "--json")
    assert json.loads(as_json.stdout)[0]["name"] == "mallory" + EVIL  # data for scripts, JSON-escaped
    assert_no_raw_controls(as_json.stdout)


def test_status_escapes_the_name_the_server_gives(hostile, home):
    server = hostile("alice")
    assert login(home, server).returncode == 0
    server.login_name = "alice" + EVIL  # the key login answers with a different, hostile name
    result = run_entry("--home", str(home), "status")
    assert result.returncode == 0, result.stderr
    assert b"alice\\x1b]0;pwned" in result.stdout
    assert_no_raw_controls(result.stdout + result.stderr)


def test_directory_name_is_refused_not_pinned(hostile, home):
    server = hostile("alice")
    assert login(home, server).returncode == 0
    result = run_entry("--home", str(home), "send", "--to", "bob", "hi")
    assert result.returncode == 6, result.stderr
    assert b"securecomm: error: the server sent an invalid user name" in result.stderr
    assert_no_raw_controls(result.stdout + result.stderr)
    contacts = home / "contacts.json"
    assert not contacts.exists() or b"bob" not in contacts.read_bytes()


def test_contacts_listing_escapes_a_tampered_name(home):
    peer = ident.PrivateIdentity.generate("x25519").public
    (home / "contacts.json").write_text(json.dumps({"bob" + EVIL: {"identity": peer.line, "first_seen": 0}}))
    result = run_entry("--home", str(home), "contacts")
    assert result.returncode == 0, result.stderr
    assert b"bob\\x1b]0;pwned" in result.stdout
    assert_no_raw_controls(result.stdout + result.stderr)
