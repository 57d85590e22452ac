"""Limits on what one user can make the server relay, answer or hold (attack report items 2, 4-7, 10).

Real server process, real TLS, real SQLite, loopback only; raw frames where
the point is a client that ignores the rules. Every loop is bounded.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import ssl
import struct
import time

import pytest

from securecomm.crypto import envelope as E
from securecomm.crypto import room as R
from securecomm.crypto.identity import PrivateIdentity
from securecomm.wire import protocol as P
from securecomm.wire.relayed import MAX_NAME
from tests.serverproc import ServerProc, add_user, login, mailbox_count, raw_frame, sc
from tests.test_dos import wait_count
from tests.test_error_table import Raw

LONG = "m" * MAX_NAME  # the longest name there is: the worst case for a relayed frame
SMALL_FRAME = 65536
ME, BOB = PrivateIdentity.generate("x25519"), PrivateIdentity.generate("x25519")
#: Envelope bytes beyond the body (x25519 suite): measured, not assumed.
OVERHEAD = len(E.seal(b"", ME, BOB.public))


def _server(tmp_path, *args: str, users: tuple[tuple[str, PrivateIdentity], ...] = ((LONG, ME), ("bob", BOB)),
            ) -> ServerProc:
    # version 1 served: the limits are the relay's, whatever the envelope; v1 envelopes are the smallest to
    # build to an exact size by hand
    srv = ServerProc(tmp_path / "srv", *args, serve_version_1=True).start()
    for name, me in users:
        add_user(srv.home, name)
        Raw(srv).start().login_password(name, me).close()  # registers the key
    return srv


def _envelope(size: int, to: PrivateIdentity = BOB) -> bytes:
    env = E.seal(os.urandom(size - OVERHEAD), ME, to.public)
    assert len(env) == size
    return env


def _answer(c: Raw) -> P.Event:
    ev = c.until(P.Receipt)
    assert ev is not None
    return ev


# -- item 2: a DIRECT that outgrows its DELIVER --------------------------------------------------
def test_direct_whose_deliver_cannot_fit_is_refused_and_the_recipient_still_logs_in(tmp_path):
    srv = _server(tmp_path, "--max-frame", str(SMALL_FRAME))
    try:
        c = Raw(srv).start().login_key(LONG, ME)
        too_big = _envelope(SMALL_FRAME - 1 - 1 - len("bob"))  # the DIRECT frame is exactly max_frame
        c.send(P.Direct("bob", too_big))
        err = _answer(c)
        assert isinstance(err, P.Error), err
        assert (err.code, err.fatal, err.msg_id) == (P.ErrorCode.TOO_LARGE, False, too_big[12:28])
        just_fits = _envelope(SMALL_FRAME - 1 - 16 - 1 - MAX_NAME)  # its DELIVER is exactly max_frame
        c.send(P.Direct("bob", just_fits))
        assert isinstance(_answer(c), P.Receipt)
        c.close()
        assert mailbox_count(srv) == 1
        for _ in range(2):  # every login, not just the first, is served
            b = Raw(srv).start().login_key("bob", BOB)
            deliver = b.until(P.Deliver)
            assert isinstance(deliver, P.Deliver) and deliver.envelope == just_fits and deliver.sender == LONG
            assert not b.closed()
            b.close()
        assert "INTERNAL" not in srv.log and "internal error" not in srv.log
    finally:
        srv.stop(signal.SIGKILL)


@pytest.mark.parametrize("unframeable", [1, 257])  # 257: more than a whole batch (relay.MAIL_BATCH) of them
def test_a_stored_message_that_cannot_be_framed_never_stops_logins(tmp_path, unframeable):
    """Rows stored under a larger --max-frame: bob's logins go on, the rest of his mail is delivered."""
    srv = _server(tmp_path, "--relay-rate", "0")  # the setup stores up to 17 MB at once
    try:
        c = Raw(srv).start().login_key(LONG, ME)
        small = _envelope(1000)
        for env in [*(_envelope(SMALL_FRAME + 100) for _ in range(unframeable)), small]:
            c.send(P.Direct("bob", env))
            assert isinstance(_answer(c), P.Receipt)
        c.close()
    finally:
        srv.stop()
    srv = ServerProc(tmp_path / "srv", "--max-frame", str(SMALL_FRAME)).start()
    try:
        for _ in range(2):
            b = Raw(srv).start().login_key("bob", BOB)
            deliver = b.until(P.Deliver)
            assert isinstance(deliver, P.Deliver) and deliver.envelope == small
            assert not b.closed()
            b.close()
        srv.wait_log("not delivered: larger than --max-frame")
        assert "internal error" not in srv.log
    finally:
        srv.stop(signal.SIGKILL)


def test_the_client_refuses_a_direct_whose_deliver_would_not_fit(tmp_path):
    """`securecomm send --to` applies the server's bound (with the longest name) before sending."""
    srv = ServerProc(tmp_path / "srv", "--max-frame", str(SMALL_FRAME)).start()
    try:
        homes = {}
        for name in ("alice", "bob"):
            add_user(srv.home, name)
            homes[name] = tmp_path / name
            assert login(homes[name], srv, name).returncode == 0
        kem = PrivateIdentity.generate()  # the default suite, as `user login` made it
        overhead = len(E.seal(b"", kem, kem.public))
        body = b"a" * (SMALL_FRAME - 5 - 10 - overhead)  # the DIRECT fits by 10 bytes; its DELIVER does not
        r = sc(homes["alice"], "send", "--to", "bob", "-", input=body)
        assert r.returncode == 9, r.stderr
        assert b"nothing was sent" in r.stderr and b"Traceback" not in r.stderr
        assert mailbox_count(srv) == 0 and "too large" not in srv.log.lower()
        assert sc(homes["alice"], "send", "--to", "bob", "small").returncode == 0
    finally:
        srv.stop(signal.SIGKILL)


# -- item 5: a room too big to answer -------------------------------------------------------------
def test_room_member_limit_keeps_join_and_who_answerable(tmp_path):
    """With ML-KEM identity lines a 1 MiB RESULT held ~620 members; here 64 KiB holds 31 (the limit is lowered)."""
    big = PrivateIdentity.generate("mlkem768-x25519")
    srv = _server(tmp_path, "--max-frame", str(SMALL_FRAME), "--max-sessions-per-user", "64",
                  users=(("bob", big), ("carol", BOB)))
    members: list[Raw] = []
    try:
        joined = 0
        for i in range(45):  # over what 64 KiB can list (38 of these identity lines)
            c = Raw(srv).start().login_key("bob", big)
            members.append(c)
            c.send(P.Request(i, "join", {"room": "lobby"}))
            ev = c.until(P.Result)
            if isinstance(ev, P.Error):
                assert (ev.code, ev.fatal, ev.rid) == (P.ErrorCode.FORBIDDEN, False, i), ev.message
                assert "full" in ev.message
                break
            joined += 1
        assert 0 < joined < 45
        c = Raw(srv).start().login_key("carol", BOB)
        c.send(P.Request(7, "who", {"room": "lobby"}))
        who = c.until(P.Result)
        assert isinstance(who, P.Result) and len(who.data["members"]) == joined
        assert not c.closed()
        assert "internal error" not in srv.log
    finally:
        for m in members:
            m.close()
        srv.stop(signal.SIGKILL)


# -- item 4: one connection's pipelined requests ---------------------------------------------------
def test_a_connection_that_does_not_read_its_answers_is_paused_then_cut_off(tmp_path):
    """300 `who` of a 32-member ML-KEM room ask for ~16 MiB of answers; a DIRECT follows in the same write.

    The server stops reading the connection once its answers pile up, so the
    DIRECT is never processed and the connection is cut off; before, every
    request in the read was answered (and the DIRECT stored) before a byte went out."""
    big = PrivateIdentity.generate("mlkem768-x25519")
    srv = _server(tmp_path, "--max-sessions-per-user", "64", "--frame-timeout", "3",
                  users=((LONG, ME), ("bob", BOB), ("carol", big)))
    members: list[Raw] = []
    try:
        for i in range(32):
            c = Raw(srv).start().login_key("carol", big)
            c.send(P.Request(i, "join", {"room": "big"}))
            assert isinstance(c.until(P.Result), P.Result)
            members.append(c)
        attacker = Raw(srv).start().login_key(LONG, ME)
        env = _envelope(1000)
        blob = b"".join(P.encode_event(P.Request(i, "who", {"room": "big"})) for i in range(300))
        attacker.send(blob + P.encode_event(P.Direct("bob", env)))  # one write, one 16 KiB TLS record
        bystander = Raw(srv).start().login_key("bob", BOB)
        bystander.send(P.Ping())
        assert isinstance(bystander.until(P.Pong), P.Pong)  # served while the attacker waits
        srv.wait_log(r"user=m+ dropped: not reading", timeout=60)
        mine = E.seal(b"after the flood", BOB, ME.public)
        bystander.send(P.Direct(LONG, mine))  # commits are in order: once this one is receipted,
        assert isinstance(bystander.until(P.Receipt), P.Receipt)  # an earlier DIRECT would be stored too
        assert mailbox_count(srv) == 1, "the DIRECT after the flood was processed"
        attacker.close()
        bystander.close()
    finally:
        for m in members:
            m.close()
        srv.stop(signal.SIGKILL)


def test_a_room_member_that_does_not_read_is_cut_off(tmp_path):
    """Room traffic to a member that never reads: cut off, while the sender is still served.

    A guard for the cut-off now that it counts the TCP transport's buffer as
    well as the TLS layer's (server.queued_bytes), not a regression test."""
    srv = _server(tmp_path, "--relay-rate", "0", users=((LONG, ME), ("bob", BOB)))  # one sender, unthrottled
    try:
        sleeper = Raw(srv).start().login_key("bob", BOB)
        sleeper.send(P.Request(1, "join", {"room": "r"}))
        assert isinstance(sleeper.until(P.Result), P.Result)
        talker = Raw(srv).start().login_key(LONG, ME)
        talker.send(P.Request(1, "join", {"room": "r"}))
        assert isinstance(talker.until(P.Result), P.Result)
        key = R.SenderKey.generate()
        for _ in range(400):  # 400 x 60 KiB = 24 MiB at most; the cut-off comes at ~4 MiB plus socket buffers
            talker.send(P.RoomSend("r", R.encrypt("r", os.urandom(60 * 1024), ME, key)))
            assert isinstance(talker.until(P.Receipt), P.Receipt)
            if "user=bob dropped: not reading" in srv.log:
                break
        srv.wait_log("user=bob dropped: not reading", timeout=30)
        assert not talker.closed()
        talker.close()
        sleeper.close()
    finally:
        srv.stop(signal.SIGKILL)


# -- item 6: sessions per account -------------------------------------------------------------------
def test_one_account_cannot_take_every_client_slot(tmp_path):
    srv = _server(tmp_path, "--max-clients", "20")  # --max-sessions-per-user at its default, 16
    held: list[Raw] = []
    try:
        for _ in range(16):
            held.append(Raw(srv).start().login_key(LONG, ME))
        c = Raw(srv).start()
        assert c.hello is not None
        c.send(P.LoginKey(LONG, ME.sign(P.login_transcript(c.hello.challenge, c.server_identity.fingerprint,
                                                             LONG))))
        err = c.error()
        assert (err.code, err.fatal) == (P.ErrorCode.TOO_MANY_CLIENTS, True)
        assert "16 sessions" in err.message and c.closed()
        b = Raw(srv).start().login_key("bob", BOB)  # another account still gets in
        assert not b.closed()
        b.close()
        held.pop().close()  # a place freed is a place again
        for _ in range(50):  # bounded: the server forgets the closed session within a few turns
            try:
                held.append(Raw(srv).start().login_key(LONG, ME))
                break
            except AssertionError:
                continue
        assert len(held) == 16
    finally:
        for h in held:
            h.close()
        srv.stop(signal.SIGKILL)


# -- item 7: connections that never log in, per address --------------------------------------------
def test_two_addresses_cannot_fill_the_places_of_strangers(tmp_path):
    """The per-address default (32) makes the 512 places take 16 addresses, not 2."""
    srv = _server(tmp_path, users=(("bob", BOB),))
    socks: list[socket.socket] = []
    try:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(40):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(10)
                s.bind((source, 0))
                s.connect(("127.0.0.1", srv.port))
                socks.append(s)
        beyond = "not logged in yet (the maximum per address)"
        assert wait_count(srv, beyond, 2 * (40 - 32), timeout=30), srv.log[-2000:]
        b = Raw(srv).start().login_key("bob", BOB)  # 127.0.0.1 still gets in
        assert not b.closed()
        b.close()
        assert srv.log.count(beyond) == 2 * (40 - 32)  # the first 32 of each address were let in
    finally:
        for s in socks:
            s.close()
        srv.stop(signal.SIGKILL)


# -- item 10: no frame a client can send is an INTERNAL error -------------------------------------
def _mutations(rng: random.Random, room_payload: bytes, env: bytes) -> list[bytes]:
    """Frame payloads after login: each client type, well formed and broken, with boundary integers."""
    big = [0, 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1]
    out = [bytes([P.MsgType.ACK]) + struct.pack(">QB32s64s", seq, st, bytes(32), bytes(64))
           for seq in big for st in (1, 2)]
    valid = [P.Direct("bob", env), P.RoomSend("r", room_payload), P.RoomKey("bob", env), P.Send(env),
             P.Request(1, "who", {"room": "r"}), P.Request(2, "join", {"room": "r"}),
             P.Request(3, "lookup", {"user": "bob"}), P.Request(4, "leave", {"room": "r"})]
    for ev in valid:
        payload = P.encode_event(ev)[4:]
        out.append(payload)
        for _ in range(12):
            b = bytearray(payload)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(1, len(b))] = rng.randrange(256)
            out.append(bytes(b))
            out.append(payload[: rng.randrange(1, len(payload))])
    for t in P.MsgType:
        out.append(bytes([t]) + rng.randbytes(rng.randrange(0, 200)))
    return out


def test_no_frame_a_client_can_send_is_an_internal_error(tmp_path):
    srv = _server(tmp_path, "--max-frame", str(SMALL_FRAME))
    rng = random.Random(20261127)
    env = _envelope(500)
    room_payload = R.encrypt("r", b"fuzz", ME, R.SenderKey.generate())
    c: Raw | None = None
    answers: dict[str, int] = {}
    try:
        for payload in _mutations(rng, room_payload, env):
            if c is None:
                c = Raw(srv).start().login_key(LONG, ME)
            c.send(raw_frame(payload), P.Ping())
            while True:  # up to the PONG, or the close after a fatal error
                try:
                    ev = c.next()
                except (ConnectionError, ssl.SSLError, OSError):
                    ev = None
                if ev is None or isinstance(ev, P.Pong):
                    break
                if isinstance(ev, P.Error):
                    assert ev.code != P.ErrorCode.INTERNAL, (payload[:40].hex(), ev.message)
                    answers[P.ErrorCode(ev.code).name] = answers.get(P.ErrorCode(ev.code).name, 0) + 1
            if ev is None:
                c.close()
                c = None
        assert "internal error" not in srv.log and "Traceback" not in srv.log
        assert answers  # the mutations did reach the checks
    finally:
        if c is not None:
            c.close()
        srv.stop(signal.SIGKILL)


def test_no_frame_before_login_is_an_internal_error(tmp_path):
    """The same invariant in the two states before login (each answer here is fatal or a PONG)."""
    srv = _server(tmp_path, users=(("bob", BOB),))
    rng = random.Random(7)
    try:
        for i in range(60):  # bounded: 60 connections
            c = Raw(srv)
            if i % 2:
                c.start()
            kind = rng.choice(list(P.MsgType))
            c.send(raw_frame(bytes([kind]) + rng.randbytes(rng.randrange(0, 300))), P.Ping())
            while (ev := c.next()) is not None and not isinstance(ev, P.Pong):
                if isinstance(ev, P.Error):
                    assert ev.code != P.ErrorCode.INTERNAL, (kind.name, ev.message)
            c.close()
        assert "internal error" not in srv.log and "Traceback" not in srv.log
    finally:
        srv.stop(signal.SIGKILL)


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_ack_beyond_any_seq_is_ignored(tmp_path, seq):
    srv = _server(tmp_path, users=(("bob", BOB),))
    try:
        b = Raw(srv).start().login_key("bob", BOB)
        b.send(P.Ack(seq, P.ACK_OK), P.Ping())
        assert isinstance(b.until(P.Pong), P.Pong)  # no ERROR before it: ignored, as PROTOCOL.md 5.5 says
        assert not b.closed()
        b.close()
    finally:
        srv.stop(signal.SIGKILL)


def test_a_user_list_over_the_frame_limit_is_refused_not_internal(tmp_path):
    """`user_list` of more accounts than one frame holds: TOO_LARGE for that request, the session goes on."""
    from securecomm.store import passwords
    from securecomm.store.db import Store

    srv = ServerProc(tmp_path / "srv", "--max-frame", "4096").start()
    try:
        add_user(srv.home, "alice", "--admin")
        store = Store(srv.home / "securecomm.db")  # the real database, written as `user add` would
        phc = passwords.hash_password("not used by this test")
        for i in range(40):  # ~140 bytes of JSON each: 40 of them exceed 4096
            store.add_user(f"{i:02d}" + "u" * 30, phc)
        store.close()
        c = Raw(srv).start().login_password("alice", ME)
        c.send(P.Request(3, "user_list", {}))
        err = c.until(P.Result)
        assert isinstance(err, P.Error), err
        assert (err.code, err.fatal, err.rid) == (P.ErrorCode.TOO_LARGE, False, 3)
        assert not c.closed()
        assert "internal error" not in srv.log
        c.close()
    finally:
        srv.stop(signal.SIGKILL)


def held(srv: ServerProc) -> int:
    """One-time prekeys the server holds, all devices (read with sqlite3 itself)."""
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return int(con.execute("SELECT COUNT(*) FROM prekeys WHERE kind = 1").fetchone()[0])
    finally:
        con.close()


def test_a_device_answer_over_the_frame_limit_is_refused_and_the_server_warns_at_start(tmp_path):
    """The attacker's check: under --max-frame 4096 a prekey claim's answer (about 5.8 KiB per device)
    did not fit: 'internal server error', the connection dropped, every `send --to` failed so."""
    from tests.serverproc import users_logged_in

    srv = ServerProc(tmp_path / "srv", "--max-frame", "4096").start()
    try:
        assert "--max-frame 4096 is below 65536" in srv.log
        homes = users_logged_in(srv, tmp_path)
        before = held(srv)
        r = sc(homes["alice"], "send", "--to", "bob", "hello")
        assert r.returncode == 9, r.stderr  # refused as too large (README's exit codes), not internal (1)
        assert b"the answer to 'prekeys_claim' is larger than this server's frame limit (4096 bytes)" in r.stderr
        assert "internal" not in srv.log.lower() and b"Traceback" not in r.stderr
        assert held(srv) == before  # the refused claim used no prekey (before: one of each of bob's devices)
    finally:
        srv.stop(signal.SIGKILL)


def test_a_quiet_session_of_the_same_device_makes_room_at_the_session_limit(tmp_path):
    """The attacker's check: links that died without a FIN (or held open by someone between) kept their
    sessions, and at --max-sessions-per-user the account was locked out for the whole --idle-timeout. A
    new login of the same listed device now replaces one of its sessions the server has not heard from
    for 0.75 x --idle-timeout (a client PINGs at half of it); a session that talks is never replaced."""
    from securecomm.crypto import identity as ident

    srv = ServerProc(tmp_path / "srv", "--max-sessions-per-user", "2", "--idle-timeout", "20").start()
    zombies: list[Raw] = []
    try:
        add_user(srv.home, "alice")
        assert login(tmp_path / "alice", srv, "alice").returncode == 0  # a listed device (version 2)
        me = ident.load(tmp_path / "alice" / "identities" / "default.key")
        zombies = [Raw(srv).start().login_key("alice", me) for _ in range(2)]
        refused = Raw(srv).start()
        assert refused.hello is not None
        refused.send(P.LoginKey("alice", me.sign(P.login_transcript(refused.hello.challenge,
                                                                    refused.server_identity.fingerprint, "alice"))))
        assert refused.error().code == P.ErrorCode.TOO_MANY_CLIENTS  # both heard from just now
        deadline = time.monotonic() + 18  # before --idle-timeout would end the quiet ones anyway
        while True:
            try:
                fresh = Raw(srv).start().login_key("alice", me)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "no quiet session was replaced"
                time.sleep(0.5)
        err = zombies[0].error()  # the one quiet longest (its login came first)
        assert err.code == P.ErrorCode.TOO_MANY_CLIENTS and err.fatal
        assert "replaced by a newer login of this device" in err.message
        assert zombies[0].next() is None  # and closed, without a word from the client
        srv.wait_log(r"replaces .*: the same device, quiet for \d+ s, at alice's session limit")
        fresh.close()
    finally:
        for z in zombies:
            z.close()
        srv.stop(signal.SIGKILL)


def test_one_device_cannot_hold_every_session_of_its_account(tmp_path):
    """The attacker's check (stop 26): a device not yet removed (a stolen phone) held all of the account's
    sessions, PINGing so none was quiet, and the owner's other device could not even log in to remove it.
    A login of a device holding at least two sessions fewer than the one holding the most now replaces
    that one's quietest session, closed at once; the hog's own next login is still refused."""
    from securecomm.crypto import identity as ident

    srv = ServerProc(tmp_path / "srv", "--max-sessions-per-user", "3").start()
    hog: list[Raw] = []
    try:
        add_user(srv.home, "alice")
        assert login(tmp_path / "alice", srv, "alice").returncode == 0  # the phone: a listed device
        phone = ident.load(tmp_path / "alice" / "identities" / "default.key")
        hog = [Raw(srv).start().login_key("alice", phone) for _ in range(3)]
        for h in hog:  # all heard from: none is quiet
            h.send(P.Ping())
            assert isinstance(h.until(P.Pong), P.Pong)
        owner = Raw(srv).start()  # the owner's laptop, password only (a new device logs in so first)
        owner.send(owner.registration("alice", ident.PrivateIdentity.generate("x25519")))
        assert isinstance(owner.until(P.LoginOk), P.LoginOk)
        err = hog[0].error()  # the quietest of the phone's: it logged in first
        assert err.code == P.ErrorCode.TOO_MANY_CLIENTS and err.fatal and "another device" in err.message
        assert hog[0].next() is None  # closed at once, without a word from the client
        srv.wait_log(r"replaces .*: one device held 3 of alice's 3 sessions")
        again = Raw(srv).start()  # the phone cannot take it back: it holds two, the laptop one
        assert again.hello is not None
        again.send(P.LoginKey("alice", phone.sign(P.login_transcript(again.hello.challenge,
                                                                      again.server_identity.fingerprint, "alice"))))
        assert again.error().code == P.ErrorCode.TOO_MANY_CLIENTS
        owner.send(P.Ping())
        assert isinstance(owner.until(P.Pong), P.Pong)  # the laptop's session is untouched
        owner.close()
    finally:
        for h in hog:
            h.close()
        srv.stop(signal.SIGKILL)


def test_server_hello_announces_the_mailbox_lifetime(tmp_path):
    """PROTOCOL 6.5: a device keeps an unused one-time key as long as the server keeps mail (SERVER_HELLO)."""
    srv = ServerProc(tmp_path / "srv", "--mailbox-ttl", "90d").start()
    try:
        c = Raw(srv).start()
        assert c.hello is not None and c.hello.mailbox_ttl == 90 * 86400
        c.close()
    finally:
        srv.stop(signal.SIGKILL)


def test_an_inbox_follow_replaced_at_the_session_limit_reconnects(tmp_path):
    """The new user's check (stop 26): a laptop's `inbox --follow`, stopped (Ctrl-Z, sleep) long enough
    for a newer login of the same device to replace its session at the limit, exited 9 when it woke
    ("server: replaced by a newer login ..."), though README says a follow reconnects after a dropped
    connection. A TOO_MANY_CLIENTS after LOGIN_OK is that replacement: the follow reconnects."""
    import json
    import subprocess

    from tests.conftest import ENTRY

    srv = ServerProc(tmp_path / "srv", "--max-sessions-per-user", "1", "--idle-timeout", "4").start()
    follow = None
    try:
        for user in ("alice", "bob"):
            add_user(srv.home, user)
            assert login(tmp_path / user, srv, user).returncode == 0
        before = srv.log.count(" logged in (")
        follow = subprocess.Popen([ENTRY, "--home", str(tmp_path / "bob"), "inbox", "--follow", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert wait_count(srv, " logged in (", before + 1, timeout=30)  # the follow's session
        follow.send_signal(signal.SIGSTOP)  # quiet from now: no PING
        deadline = time.monotonic() + 30
        while sc(tmp_path / "bob", "inbox").returncode != 0:  # refused until the follow's session is quiet 3 s
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.5)
        srv.wait_log(r"replaces .*: the same device, quiet for \d+ s, at bob's session limit")
        follow.send_signal(signal.SIGCONT)
        assert sc(tmp_path / "alice", "send", "--to", "bob", "after the replacement").returncode == 0
        assert follow.stdout is not None
        line = follow.stdout.readline()  # the follow reconnected and shows it (a hang here: the timeout fails it)
        assert json.loads(line)["body"] == "after the replacement"
        assert follow.poll() is None  # still following
    finally:
        if follow is not None:
            follow.kill()
            _, err = follow.communicate(timeout=10)
            assert b"Traceback" not in err
        srv.stop(signal.SIGKILL)


def test_a_replaced_follow_retries_the_session_limit_until_the_newer_session_leaves(tmp_path):
    """The re-check (stop 26): a follow (or chat) replaced at the session limit reconnected at once, was
    refused because the newer session was still there, and exited 9. For a minute after a replacement
    the session limit at login is retried with the usual backoff."""
    import json
    import subprocess

    from securecomm.crypto import identity as ident
    from tests.conftest import ENTRY

    srv = ServerProc(tmp_path / "srv", "--max-sessions-per-user", "1", "--idle-timeout", "4").start()
    follow = None
    newer: Raw | None = None
    try:
        for user in ("alice", "bob"):
            add_user(srv.home, user)
            assert login(tmp_path / user, srv, user).returncode == 0
        me = ident.load(tmp_path / "bob" / "identities" / "default.key")
        before = srv.log.count(" logged in (")
        follow = subprocess.Popen([ENTRY, "--home", str(tmp_path / "bob"), "inbox", "--follow", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert wait_count(srv, " logged in (", before + 1, timeout=30)
        follow.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while newer is None:  # the newer session: refused until the follow's is quiet for 3 s, then stays
            try:
                newer = Raw(srv).start().login_key("bob", me)
            except AssertionError:
                assert time.monotonic() < deadline, srv.log
                time.sleep(0.5)
        refused = srv.log.count("login refused: bob already has 1 sessions")
        follow.send_signal(signal.SIGCONT)
        assert wait_count(srv, "login refused: bob already has 1 sessions", refused + 1, timeout=30)
        newer.close()  # the newer session leaves: the follow's next try gets in
        newer = None
        assert sc(tmp_path / "alice", "send", "--to", "bob", "after the newer session left").returncode == 0
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline())["body"] == "after the newer session left"
        assert follow.poll() is None
    finally:
        if newer is not None:
            newer.close()
        if follow is not None:
            follow.kill()
            _, err = follow.communicate(timeout=10)
            assert b"Traceback" not in err
        srv.stop(signal.SIGKILL)
