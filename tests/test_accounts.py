"""Accounts and logins: lockout, proof of possession, removed users, password rule, one device per user.

Real server process on an ephemeral loopback port, real TLS, real SQLite.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sqlite3
import time

import pytest

from securecomm.crypto import identity as ident
from securecomm.errors import AuthError, ExistsError, UsageError
from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder
from tests.conftest import ENTRY
from tests.serverproc import PASSWORD, ServerProc, add_user, frame, login, read_events, sc, tls_socket

WRONG = "not the password"


@pytest.fixture
def server(tmp_path):
    srv = ServerProc(tmp_path / "server", "--lock-after", "3").start()
    add_user(srv.home, "alice", "--admin")
    add_user(srv.home, "bob")
    yield srv
    srv.stop(signal.SIGKILL)


def wait_count(srv: ServerProc, pattern: str, n: int, timeout: float = 20) -> int:
    """Wait until the server log has at least n matches (its stderr is read by a thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = len(re.findall(pattern, srv.log))
        if found >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} seen fewer than {n} times:\n{srv.log}")


def last_error(r) -> str:
    return r.stderr.decode().strip().splitlines()[-1]


# -- item 3: guesses lock password logins only --------------------------------------------
def test_guesses_never_block_key_logins_of_enrolled_devices(server, tmp_path):
    bob = tmp_path / "bob"
    assert login(bob, server, "bob").returncode == 0
    for _ in range(3):
        assert login(tmp_path / "x", server, "bob", WRONG).returncode == 5
    # the device key still works (before: "key not registered")
    r = sc(bob, "send", "still here")
    assert r.returncode == 0, r.stderr
    # a password login, even with the right password, is told it is locked and until when
    r = login(tmp_path / "x", server, "bob")
    assert r.returncode == 5
    assert re.search(r"locked until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", last_error(r)), r.stderr


def test_a_key_login_does_not_lift_the_password_lock_nor_its_record(server, tmp_path):
    """Found by a new user: after a key login `user list` said 'no' and a restart forgot the lock."""
    bob = tmp_path / "bob"
    assert login(bob, server, "bob").returncode == 0
    for _ in range(3):
        assert login(tmp_path / "x", server, "bob", WRONG).returncode == 5
    before = last_error(login(tmp_path / "x", server, "bob"))
    assert "locked until" in before
    assert sc(bob, "send", "key login").returncode == 0
    listed = json.loads(sc(server.home, "user", "list", "--json").stdout)
    assert next(u for u in listed if u["name"] == "bob")["locked"] is True
    server.stop()
    server.start()
    assert last_error(login(tmp_path / "x", server, "bob")) == before  # same lock, same end


def test_failures_while_locked_are_not_counted_and_do_not_extend_the_lock(server, tmp_path):
    for _ in range(3):
        login(tmp_path / "x", server, "bob", WRONG)
    first = last_error(login(tmp_path / "x", server, "bob", WRONG))
    tested = len(re.findall(r"login failed for 'bob': wrong password", server.log))
    for _ in range(3):
        again = last_error(login(tmp_path / "x", server, "bob", WRONG))
        assert again == first  # same end of lock: not moved forward
    wait_count(server, r"password login refused for 'bob': locked", 4)
    assert len(re.findall(r"login failed for 'bob': wrong password", server.log)) == tested == 3


def test_unknown_and_known_names_answer_alike_when_locked(server, tmp_path):
    known = [last_error(login(tmp_path / "x", server, "bob", WRONG)) for _ in range(4)]
    unknown = [last_error(login(tmp_path / "x", server, "nobody", WRONG)) for _ in range(4)]
    strip = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert [strip.sub("T", k) for k in known] == [strip.sub("T", u) for u in unknown]
    assert "locked until" in known[-1] and "locked until" not in known[0]


def test_password_reset_lifts_the_lock_and_a_success_clears_the_counter(server, tmp_path):
    for _ in range(2):
        login(tmp_path / "x", server, "bob", WRONG)
    assert login(tmp_path / "x", server, "bob").returncode == 0  # clears the two failures
    for _ in range(2):
        login(tmp_path / "x", server, "bob", WRONG)
    assert login(tmp_path / "x", server, "bob").returncode == 0  # not locked: the count started again
    for _ in range(3):
        login(tmp_path / "x", server, "bob", WRONG)
    assert login(tmp_path / "x", server, "bob").returncode == 5
    r = sc(server.home, "user", "passwd", "bob", "--keep-key", "--password-stdin", input=b"violet tractor umbrella\n")
    assert r.returncode == 0, r.stderr
    assert login(tmp_path / "x", server, "bob", "violet tractor umbrella").returncode == 0


def lock_bob_then_restart(server, tmp_path) -> str:
    """Lock bob's password logins, restart the server; the locked answer from before the restart."""
    for _ in range(3):
        login(tmp_path / "x", server, "bob", WRONG)
    before = last_error(login(tmp_path / "x", server, "bob"))
    assert "locked until" in before
    server.stop()
    server.start()
    return before


def test_a_lock_survives_a_server_restart(server, tmp_path):
    before = lock_bob_then_restart(server, tmp_path)
    assert last_error(login(tmp_path / "x", server, "bob")) == before  # same lock, same end


# -- item 4: concurrent guesses --------------------------------------------------------------
def test_concurrent_guesses_test_at_most_lock_after_passwords(server, tmp_path):
    n = 12
    socks = [tls_socket(server, timeout=30) for _ in range(n)]
    burst = frame(P.Hello()) + frame(P.LoginPassword("bob", WRONG))
    for s in socks:  # all guesses in flight before the first hash ends
        s.sendall(burst)
    answers = [read_events(s, timeout=30)[-1] for s in socks]
    for s in socks:
        s.close()
    assert all(isinstance(a, P.Error) and a.code == P.ErrorCode.AUTH_FAILED for a in answers)
    wait_count(server, r"login failed for 'bob'|password login refused for 'bob'", n)
    assert len(re.findall(r"login failed for 'bob': wrong password", server.log)) == 3
    assert sum("locked until" in a.message for a in answers) == n - 3
    assert login(tmp_path / "x", server, "bob").returncode == 5  # locked, whatever the concurrency


# -- item 5: proof of possession ---------------------------------------------------------------
def _hello(sock) -> P.ServerHello:
    sock.sendall(frame(P.Hello()))
    dec = FrameDecoder()
    while (payload := dec.next_frame()) is None:
        dec.receive_data(sock.recv(65536))
    hello = P.decode_payload(payload)
    assert isinstance(hello, P.ServerHello)
    return hello


def _register(server, user: str, me: ident.PrivateIdentity, sign: bool, challenge: bytes | None = None):
    sock = tls_socket(server)
    hello = _hello(sock)
    server_fp = ident.PublicIdentity.from_line(hello.identity).fingerprint
    proof = me.sign(P.register_transcript(challenge or hello.challenge, server_fp, user)) if sign else None
    sock.sendall(frame(P.LoginPassword(user, PASSWORD, me.public.line, proof)))
    events = read_events(sock)
    sock.close()
    return events


def test_registration_needs_a_proof_of_possession(server):
    me = ident.PrivateIdentity.generate()
    for events in (_register(server, "bob", me, sign=False),
                   _register(server, "bob", me, sign=True, challenge=b"\x00" * 32)):  # another connection's
        assert isinstance(events[-1], P.Error) and events[-1].code == P.ErrorCode.INTEGRITY
        assert "proof of possession" in events[-1].message
    # a key-login signature is no registration proof (distinct labels)
    sock = tls_socket(server)
    hello = _hello(sock)
    fp = ident.PublicIdentity.from_line(hello.identity).fingerprint
    sock.sendall(frame(P.LoginPassword("bob", PASSWORD, me.public.line,
                                       me.sign(P.login_transcript(hello.challenge, fp, "bob")))))
    assert read_events(sock)[-1].code == P.ErrorCode.INTEGRITY
    ok = _register(server, "bob", me, sign=True)
    assert isinstance(ok[0], P.LoginOk) and ok[0].fingerprint == me.public.fingerprint_text


def test_a_key_registered_to_another_account_is_refused(server, tmp_path):
    alice = tmp_path / "alice"
    assert login(alice, server, "alice").returncode == 0
    r = login(alice, server, "bob")  # the same device key for a second account
    assert r.returncode == 4
    assert "already registered to another account" in last_error(r)
    rows = json.loads(sc(server.home, "user", "list", "--json").stdout)
    assert {u["name"]: u["fingerprint"] is not None for u in rows} == {"alice": True, "bob": False}


def test_passwd_removes_the_key_unless_keep_key(server, tmp_path):
    bob = tmp_path / "bob"
    assert login(bob, server, "bob").returncode == 0
    r = sc(server.home, "user", "passwd", "bob", "--keep-key", "--password-stdin", input=b"violet tractor umbrella\n")
    assert r.returncode == 0 and b"key kept" in r.stderr
    assert sc(bob, "send", "kept").returncode == 0
    r = sc(server.home, "user", "passwd", "bob", "--password-stdin", input=b"purple tractor umbrella\n")
    assert r.returncode == 2 and b"--keep-key (keep them) or --yes" in r.stderr  # never unasked (new-user check)
    assert sc(bob, "send", "still kept").returncode == 0
    r = sc(server.home, "user", "passwd", "bob", "--yes", "--password-stdin", input=b"purple tractor umbrella\n")
    assert r.returncode == 0 and b"key removed" in r.stderr
    assert b"securecomm user login bob --reset-user-key" in r.stderr  # the command that now works (re-check)
    r = sc(bob, "send", "old key")  # whoever held the old password and key is out
    assert r.returncode == 5, r.stderr
    # the device still holds bob's user key and the server has no list now: a new user key is made only when
    # asked for (attacker's check: it was made silently, as it would be for a server that lost or hid the list)
    r = login(bob, server, "bob", "purple tractor umbrella")
    assert r.returncode == 6, r.stderr
    assert r.stderr.decode().splitlines()[-2:] == [
        "securecomm: error: the server has no device list for bob, but this device holds bob's user key: the "
        "server's operator reset the account's devices or restored an older backup, or the server is misbehaving",
        "securecomm: hint: if the server's operator says so, make a new user key: securecomm user login bob "
        "--reset-user-key (your contacts will see it change)"]
    assert login(bob, server, "bob", "purple tractor umbrella", "--reset-user-key", "--yes").returncode == 0
    assert sc(bob, "send", "new password, key registered again").returncode == 0


# -- item 6: removed users -------------------------------------------------------------------
async def _open_session(home):
    from securecomm.cli.context import State
    from securecomm.client.login import connect_profile

    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, _ = await connect_profile(state.paths, me)
    return client


def test_remove_drops_the_users_open_sessions(server, tmp_path):
    bob = tmp_path / "bob"
    assert login(bob, server, "bob").returncode == 0

    async def go() -> object:
        client = await _open_session(bob)
        async with client:
            r = await asyncio.to_thread(sc, server.home, "user", "remove", "bob", "--yes")
            assert r.returncode == 0 and b"closes its open sessions" in r.stderr
            return await asyncio.wait_for(client.events.get(), 20)  # an event, not a sleep

    ended = asyncio.run(go())
    assert isinstance(ended, AuthError) and "account was removed" in ended.message
    server.wait_log(r"user=bob dropped: the account was removed")


def test_a_new_account_never_gets_a_removed_users_id(server, tmp_path):
    add_user(server.home, "carol")
    con = sqlite3.connect(server.home / "securecomm.db")
    try:
        (carol_id,) = con.execute("SELECT id FROM users WHERE name = 'carol'").fetchone()
        assert sc(server.home, "user", "remove", "carol", "--yes").returncode == 0
        add_user(server.home, "dave")
        (dave_id,) = con.execute("SELECT id FROM users WHERE name = 'dave'").fetchone()
    finally:
        con.close()
    assert dave_id > carol_id


# -- item 8: the password rule -------------------------------------------------------------
@pytest.mark.parametrize("password", ["12345678", "aaaaaaaa", " " * 8, "PassWord", "ｐａｓｓｗｏｒｄ", "abcdefgh",
                                      "87654321", "iloveyou", "Sunshine"])
def test_common_repeated_and_sequential_passwords_are_refused(server, password):
    r = sc(server.home, "user", "add", "carol", "--password-stdin", input=(password + "\n").encode())
    assert r.returncode == 2, password
    assert re.match(r"securecomm: error: password is (too common|a repeated or sequential run)",
                    r.stderr.decode()), r.stderr
    assert b"Traceback" not in r.stderr


def test_long_passwords_are_allowed_and_the_user_name_is_refused(server):
    r = sc(server.home, "user", "add", "carolcarol", "--password-stdin", input=b"carolcarol\n")
    assert r.returncode == 2 and b"too common" in r.stderr
    long = "x7 " * 40  # 120 characters, no composition rules
    assert sc(server.home, "user", "add", "carol", "--password-stdin", input=(long + "\n").encode()).returncode == 0


# -- item 11: user add checks the name before asking ----------------------------------------
def test_add_existing_user_is_refused_before_any_password(server):
    r = sc(server.home, "user", "add", "alice")  # no terminal and no --password-stdin: not even asked
    assert r.returncode == 10
    assert r.stderr.decode().splitlines()[0] == "securecomm: error: user 'alice' already exists"


# -- item 14: one device per user ------------------------------------------------------------
def _version_1_account(server, name: str) -> None:
    """Make `name` an account as version 1 left it: one registered key, no user key or device list."""
    con = sqlite3.connect(server.home / "securecomm.db", isolation_level=None)
    try:
        con.execute("PRAGMA foreign_keys=ON")
        (uid,) = con.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        con.execute("DELETE FROM devices WHERE user_id = ?", (uid,))
        con.execute("DELETE FROM user_keys WHERE user_id = ?", (uid,))
    finally:
        con.close()


def _registered_key(server, name: str) -> bytes | None:
    con = sqlite3.connect(server.home / "securecomm.db")
    try:
        (key,) = con.execute("SELECT identity FROM users WHERE name = ?", (name,)).fetchone()
        return key
    finally:
        con.close()


def test_second_device_asks_before_replacing_and_contacts_recover(server, tmp_path):
    alice, bob1, bob2 = tmp_path / "alice", tmp_path / "bob1", tmp_path / "bob2"
    for home, name in ((alice, "alice"), (bob1, "bob")):
        assert login(home, server, name).returncode == 0
    assert sc(alice, "send", "--to", "bob", "first contact").returncode == 0
    # an account with a user key: a second device waits to be paired, and replaces nothing (6.4)
    r = login(bob2, server, "bob")
    assert r.returncode == 0 and b"pairing code:" in r.stderr
    assert sc(alice, "send", "--to", "bob", "still the first key").returncode == 0  # nothing replaced
    # --replace-key changes nothing for an account with a user key: the new device still only pairs. (It
    # used to make bob2's unapproved key the version-1 key: with the password alone bob2 then read bob's
    # version-1 mail and joined rooms as bob, and contacts saw CHANGED.)
    before = _registered_key(server, "bob")
    r = login(bob2, server, "bob", PASSWORD, "--replace-key")
    assert r.returncode == 0 and b"pairing code:" in r.stderr, r.stderr
    assert _registered_key(server, "bob") == before
    r = sc(bob2, "status")
    assert r.returncode != 0 and b"Traceback" not in r.stderr  # not logged in: pending until approved
    assert sc(alice, "send", "--to", "bob", "user key unchanged").returncode == 0
    assert "CHANGED" not in sc(alice, "contacts").stdout.decode()
    r = sc(bob1, "inbox", "--json")
    assert [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["first contact", "still the first key",
                                                                      "user key unchanged"]
    # a new user key is the change contacts see, until `contacts trust`, which says the warning is gone
    assert login(bob2, server, "bob", PASSWORD, "--reset-user-key", "--yes").returncode == 0
    r = sc(alice, "send", "--to", "bob", "refused")
    assert r.returncode == 6 and b"CHANGED" in r.stderr
    assert "CHANGED to" in sc(alice, "contacts").stdout.decode()
    r = sc(alice, "contacts", "trust", "bob")
    assert r.returncode == 0 and b"CHANGED cleared" in r.stdout
    assert "CHANGED" not in sc(alice, "contacts").stdout.decode()
    assert sc(alice, "send", "--to", "bob", "welcome back").returncode == 0
    r = sc(bob2, "inbox", "--json")
    assert [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["welcome back"]


def test_replacing_the_key_logs_the_other_device_out(server, tmp_path):
    """A version-1 account (one registered key): replacing it ends the other device's sessions. (A listed
    device of an account with a user key stays logged in: tests/test_multidevice.py.)"""
    bob1, bob2 = tmp_path / "bob1", tmp_path / "bob2"
    assert login(bob1, server, "bob").returncode == 0
    _version_1_account(server, "bob")

    async def go() -> object:
        client = await _open_session(bob1)
        async with client:
            r = await asyncio.to_thread(login, bob2, server, "bob", PASSWORD, "--replace-key")
            assert r.returncode == 0, r.stderr
            while isinstance(ev := await asyncio.wait_for(client.events.get(), 20), P.Notice):
                pass  # bob2's first device list is announced (device_added) before the watcher acts
            return ev

    ended = asyncio.run(go())
    assert isinstance(ended, AuthError) and "key is no longer registered" in ended.message


# -- the store and the rule without a server --------------------------------------------------
def test_migration_keeps_ids_above_old_ones_and_drops_shared_keys(tmp_path):
    from securecomm.store import db

    path = tmp_path / "old.db"
    con = sqlite3.connect(path, isolation_level=None)
    for script in db.MIGRATIONS[:2]:  # a version-2 database, as the previous release left it
        for statement in filter(str.strip, script.split(";")):
            con.execute(statement)
    con.execute("PRAGMA user_version = 2")
    con.execute("INSERT INTO users (name, role, password_hash, created_at, identity, fingerprint) VALUES "
                "('a', 'user', 'h', 0, x'01', x'aa'), ('b', 'user', 'h', 0, x'01', x'aa'), "
                "('c', 'user', 'h', 0, x'02', x'bb')")
    con.execute("INSERT INTO direct_ids VALUES (9, x'00', x'00', 0)")  # mail from a since-removed user 9
    con.close()
    store = db.Store(path)
    try:
        assert store.schema_version == len(db.MIGRATIONS)
        assert {u.name: u.fingerprint for u in store.list_users()} == {"a": None, "b": None, "c": b"\xbb"}
        assert store.add_user("d", "h").id == 10
        with pytest.raises(ExistsError):
            store.set_identity(store.require_user("a").id, b"\x02", b"\xbb")
    finally:
        store.close()


@pytest.mark.parametrize("password", ["12345678", "aaaaaaaa", " " * 8, "QWERTYUIOP", "ｐａｓｓｗｏｒｄ"])
def test_policy_refuses(password):
    from securecomm.store import passwords

    with pytest.raises(UsageError):
        passwords.check_policy(password)


def test_policy_allows_64_and_more_with_no_composition_rules():
    from securecomm.store import passwords

    passwords.check_policy("x" * 63 + "y")
    passwords.check_policy("correct horse battery staple " * 30)
    passwords.check_policy("ñandú pájaro")


def test_blocklist_is_package_data_with_source_and_licence():
    from importlib import resources

    text = resources.files("securecomm.store").joinpath("common-passwords.txt").read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Source:" in header and "Licence: MIT" in header
    entries = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert 1000 <= len(entries) <= 5000 and all(len(e) >= 8 for e in entries)


# -- on a terminal (tmux), as a person types ----------------------------------------------------
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


@pytest.fixture
def tmux():
    from tests.test_chat_tty import Tmux

    t = Tmux()
    yield t
    t.kill()


@needs_tmux
def test_add_checks_the_password_after_its_first_entry(server, tmux):
    """Refused before the second entry, and asked again (the new-user check: a common password ended
    `user add`, to be typed whole again); three refusals end it with exit 2."""
    tmux.start("add", f"{ENTRY} --home {server.home} user add carol; echo EXIT-$?; sleep 30")
    tmux.wait_for("add", "password:")
    tmux.type("add", "12345678")
    screen = tmux.wait_for("add", "securecomm: warning: password")
    assert "too common" in screen or "sequential" in screen
    assert "repeat password" not in screen.lower() and "confirmation" not in screen  # refused before a 2nd entry
    tmux.type("add", "violet tractor umbrella")
    tmux.wait_for("add", "repeat password:")
    tmux.type("add", "violet tractor umbrella")
    assert "created user carol" in tmux.wait_for("add", "EXIT-0")
    tmux.start("add2", f"{ENTRY} --home {server.home} user add dave; echo EXIT-$?; sleep 30")
    for tries in range(1, 4):
        deadline = time.monotonic() + 15
        while tmux.screen("add2").count("password:") < tries:
            assert time.monotonic() < deadline, tmux.screen("add2")
            time.sleep(0.1)
        tmux.type("add2", "12345678")
    screen = tmux.wait_for("add2", "EXIT-2")
    assert screen.count("securecomm: warning: password") == 2 and "securecomm: error: password" in screen


def _second_device_at_the_replace_prompt(server, tmp_path, tmux) -> str:
    """bob's first device registered (a version-1 account: one key, no device list); a second home logs
    in as bob in tmux and stops at the question."""
    assert login(tmp_path / "bob1", server, "bob").returncode == 0
    _version_1_account(server, "bob")
    ca = server.home / "tls" / "ca.pem"
    tmux.start("bob2", f"{ENTRY} --home {tmp_path / 'bob2'} user login bob --server {server.address} --ca {ca}; "
                       "echo EXIT-$?; sleep 30")
    tmux.wait_for("bob2", "password:")
    tmux.type("bob2", PASSWORD)
    return tmux.wait_for("bob2", "Replace it with this device's key? [y/N]")


@needs_tmux
def test_no_to_replacing_the_key_is_130_and_changes_nothing(server, tmp_path, tmux):
    """Found by a new user: 'n' exited 9 and repeated the server's error."""
    _second_device_at_the_replace_prompt(server, tmp_path, tmux)
    tmux.type("bob2", "n")
    screen = tmux.wait_for("bob2", "EXIT-")
    assert "EXIT-130" in screen and "nothing was changed" in screen
    assert sc(tmp_path / "bob1", "send", "still the registered device").returncode == 0


@needs_tmux
def test_second_device_login_asks_before_replacing_the_key(server, tmp_path, tmux):
    screen = _second_device_at_the_replace_prompt(server, tmp_path, tmux)
    assert "already has a device key registered" in screen
    tmux.type("bob2", "y")
    assert "logged in as bob" in tmux.wait_for("bob2", "EXIT-0")
    assert sc(tmp_path / "bob1", "send", "old device").returncode == 5  # the first device's key is gone
