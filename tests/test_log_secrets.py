"""A whole load-test log, in both formats, holds no planted secret: passwords, bodies, keys, tokens."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from securecomm.cli.context import State
from securecomm.crypto import envelope
from securecomm.crypto import identity as ident
from securecomm.wire import protocol as P
from tests.serverproc import ServerProc, login, sc, tls_socket, users_logged_in
from tests.test_load_faults import Sender, server_line

PASSWORD = "planted-PASSWORD-7f3a9c"  # alice's real password
WRONG = "planted-WRONG-PASSWORD-55e1"  # a guess, and a password typed where the name goes
BODY = "planted-BODY-c0ffee"
CLIENTS, PER_CLIENT = 4, 50


def secrets_of(srv: ServerProc, alice) -> list[str]:
    """What must never reach the log: the planted strings, and key material from the files."""
    keys = [line for path in (srv.home / "tls" / "server.key", srv.home / "server" / "identity.key",
                              alice / "identities" / "default.key")
            for line in path.read_text().splitlines() if line and not line.startswith("-----")]
    return [PASSWORD, WRONG, BODY, *[k[:24] for k in keys if len(k) >= 24]]


def load(srv: ServerProc, alice) -> None:
    state = State(home=str(alice))
    me = ident.load(state.paths.identity_key("default"))
    server_id = ident.PublicIdentity.from_line(server_line(srv))
    senders = [Sender(state.paths, me, [envelope.seal(f"{BODY} {c} {i}".encode(), me, server_id)
                                       for i in range(PER_CLIENT)]) for c in range(CLIENTS)]

    async def main() -> None:
        deadline = time.monotonic() + 60
        await asyncio.gather(*(s.run(deadline) for s in senders))

    asyncio.run(main())
    assert sum(len(s.receipts) for s in senders) == CLIENTS * PER_CLIENT


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_load_test_log_holds_no_planted_secret(tmp_path, log_format):
    class Verbose(ServerProc):
        options = ("-v",)  # debug lines too: the most an operator can ask for

    srv = Verbose(tmp_path / "srv", "--log-format", log_format, "--lock-after", "2").start()
    try:
        homes = users_logged_in(srv, tmp_path, ("bob",))
        r = sc(srv.home, "user", "add", "alice", "--password-stdin", input=(PASSWORD + "\n").encode())
        assert r.returncode == 0, r.stderr
        alice = tmp_path / "alice"
        assert login(alice, srv, "alice", PASSWORD).returncode == 0
        assert login(tmp_path / "guess", srv, "alice", WRONG).returncode == 5  # a wrong password
        assert login(tmp_path / "typo", srv, WRONG, PASSWORD).returncode == 5  # the password as the name
        for _ in range(3):  # past --lock-after: the lock is logged too
            login(tmp_path / "guess", srv, "alice", WRONG)
        sent = sc(alice, "send", "--to", "bob", BODY)
        assert sent.returncode == 0, sent.stderr
        assert BODY.encode() in sc(homes["bob"], "inbox").stdout
        with tls_socket(srv) as raw:  # a protocol error carrying the secret in a frame
            raw.sendall(P.encode_event(P.Hello()) + b"\x00\x00\x00\x20\x55" + BODY.encode()[:31])
        load(srv, alice)
        srv.wait_log("message refused|logged in")
    finally:
        srv.stop(signal.SIGTERM)
    log = srv.log
    assert "logged in" in log and "login failed" in log  # the log did record what happened
    for secret in secrets_of(srv, alice):
        assert secret not in log, f"{secret[:12]}... is in the server log"
    if log_format == "json":
        events = [json.loads(line) for line in log.splitlines()]
        assert {"login.ok", "login.failed", "server.listening", "server.stopped"} <= {e["event"] for e in events}
        ok = [e for e in events if e["event"] == "login.ok"]
        assert ok and all(isinstance(e["conn"], int) and e["user"] in ("alice", "bob") for e in ok)
        assert len({e["conn"] for e in ok}) == len(ok)  # one id per connection


def test_quiet_keeps_warnings_and_drops_info(tmp_path):
    class Quiet(ServerProc):
        options = ("-q",)

    srv = Quiet(tmp_path / "srv").start()
    try:
        users_logged_in(srv, tmp_path, ("bob",))
        assert login(tmp_path / "guess", srv, "bob", WRONG).returncode == 5
        srv.wait_log(r"WARNING login\.failed conn=\d+ peer=")
    finally:
        srv.stop(signal.SIGTERM)
    assert " INFO " not in srv.log and "logged in" not in srv.log


def test_at_debug_level_an_upload_and_its_fetch_are_not_linked(tmp_path):
    """The attacker's check (stop 26): at -v the uploader's line and the fetcher's line carried the same
    12-digit prefix of the file id, which said who sends files to whom; now only the uploader's has it."""
    class Verbose(ServerProc):
        options = ("-v",)

    srv = Verbose(tmp_path / "srv").start()
    try:
        homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
        src = tmp_path / "f.bin"
        src.write_bytes(b"x" * 5000)
        sent = sc(homes["alice"], "send", "--to", "bob", "--file", str(src), "--json")
        assert sent.returncode == 0, sent.stderr
        file_id = json.loads(sent.stdout)["file_id"]
        assert sc(homes["bob"], "inbox").returncode == 0
        assert sc(homes["bob"], "fetch", file_id, "-o", str(tmp_path / "got.bin")).returncode == 0
        srv.wait_log("user=bob fetched a file")
    finally:
        srv.stop(signal.SIGTERM)
    with_prefix = [line for line in srv.log.splitlines() if file_id[:12] in line]
    assert with_prefix and all("user=alice" in line for line in with_prefix), with_prefix
