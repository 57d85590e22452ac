"""Devices as a careful user expects them (issue 12, findings/newuser2.md items 3-12): each test walks
README's commands through the installed entry point against a real server (real TLS, real SQLite) and
fails on the code before its fix (named in each docstring)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import PASSWORD, ServerProc, login, mailbox_count, sc, users_logged_in
from tests.test_multidevice_cli import fingerprint_in

CODE = re.compile(rb"pairing code:? ([0-9A-Z]{5}-[0-9A-Z]{5})")


def _fp(r) -> str:
    return fingerprint_in(r.stderr + r.stdout)


def _code(r) -> str:
    found = CODE.search(r.stderr + r.stdout)
    assert found, r.stderr
    return found.group(1).decode()


def _pair(srv: ServerProc, first: Path, second: Path, user: str, *extra: str) -> None:
    r = login(second, srv, user, PASSWORD, *extra)
    assert r.returncode == 0, r.stderr
    r = sc(first, "devices", "approve", _code(r), "--fingerprint", _fp(r))
    assert r.returncode == 0, r.stderr
    r = login(second, srv, user, PASSWORD, *extra)
    assert r.returncode == 0, r.stderr
    assert b"paired" in r.stderr, r.stderr


def _rows(home: Path) -> list[dict]:
    r = sc(home, "devices", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _pairings(srv: ServerProc) -> list[bytes]:
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return [bytes(d) for (d,) in con.execute("SELECT device_id FROM pairings")]
    finally:
        con.close()


async def _until(events: list, found: Any, what: str) -> None:
    """Wait (30 s at most) for an event `found` accepts among those a running session showed."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + 30
    while not any(found(e) for e in events):
        assert asyncio.get_running_loop().time() < deadline, (what, events)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _running_session(home: Path, user: str) -> AsyncIterator[tuple[Any, list]]:
    """`user`'s Messenger running in-process, as chat and inbox --follow run it: (it, the events shown)."""
    import asyncio

    from securecomm.cli.context import State
    from securecomm.client.login import connect_profile
    from securecomm.client.messenger import Messenger
    from securecomm.crypto import identity as ident

    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    events: list = []
    client, _ = await connect_profile(state.paths, me)
    m = Messenger(client, me, user, state.paths, events.append)
    pump = asyncio.create_task(m.run())
    try:
        yield m, events
    finally:
        pump.cancel()
        await client.close()


def _reset_and_send(srv: ServerProc, home: Path, text: str) -> None:
    """alice resets her user key from `home`'s device (it stays hers), then writes to bob from it."""
    r = login(home, srv, "alice", PASSWORD, "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr
    r = sc(home, "send", "--to", "bob", text)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    homes["phone"] = tmp_path / "alice-phone"
    _pair(srv, homes["alice"], homes["phone"], "alice")
    yield srv, homes
    srv.stop(signal.SIGKILL)


def test_a_removed_device_logs_in_again_and_pairs_anew(world):
    """Item 3. Before: the server kept the removed device's used pairing record and answered
    pair_complete with the old approval; the client then crashed on the user key it already held
    (`internal error (FileExistsError)`, exit 1, every time)."""
    srv, homes = world
    phone = next(r for r in _rows(homes["alice"]) if not r["this"])
    r = sc(homes["alice"], "devices", "remove", phone["id"], "--yes")
    assert r.returncode == 0, r.stderr
    assert bytes.fromhex(phone["device_id"]) not in _pairings(srv)  # the server forgot its pairing
    r = login(homes["phone"], srv, "alice")
    assert r.returncode == 0, r.stderr
    assert b"internal error" not in r.stderr
    code = _code(r)  # a new pairing, not the old approval
    r = sc(homes["phone"], "inbox")  # item 10 for a removed device asking again: it waits, with this code
    assert r.returncode == 5 and f"waits to be paired with alice's devices (pairing code {code})".encode() \
        in r.stderr, r.stderr
    assert sc(homes["alice"], "devices", "approve", code, "--fingerprint", _fp(r)).returncode == 0
    r = login(homes["phone"], srv, "alice")
    assert r.returncode == 0, r.stderr
    assert len(_rows(homes["phone"])) == 2
    assert sc(homes["bob"], "send", "--to", "alice", "back again").returncode == 0
    r = sc(homes["phone"], "inbox", "--json")
    assert r.returncode == 0 and [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["back again"]


def test_an_old_device_paired_after_a_reset_takes_the_new_user_key(world):
    """Item 4. Before: the laptop, approved by the device that reset the key, logged in "registered",
    kept the old user key, and `devices` / `send` then failed (exit 6, no hint)."""
    srv, homes = world
    r = login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr
    new_key = json.loads(login(homes["phone"], srv, "alice", PASSWORD, "--json").stdout)["user_key"]
    r = sc(homes["alice"], "inbox")  # item 8: the dropped laptop is told a reset may be why
    assert r.returncode == 5 and b"--reset-user-key` on another device" in r.stderr, r.stderr
    r = login(homes["alice"], srv, "alice")  # the dropped laptop asks to join again
    assert r.returncode == 0, r.stderr
    assert sc(homes["phone"], "devices", "approve", _code(r), "--fingerprint", _fp(r)).returncode == 0
    r = login(homes["alice"], srv, "alice", PASSWORD, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user_key"] == new_key
    assert b"user key was reset" in r.stderr and b"paired" in r.stderr
    assert len(_rows(homes["alice"])) == 2
    r = sc(homes["alice"], "send", "--to", "alice", "note")
    assert r.returncode == 0, r.stderr
    r = sc(homes["alice"], "inbox", "--json")
    assert r.returncode == 0 and b"REJECTED" not in r.stderr


def test_a_device_waiting_to_be_paired_says_so_everywhere(world, tmp_path):
    """Item 10. Before: `user login` printed "logged in ... registered" (no pending state in --json), and
    send/inbox/devices/status on that device said "key not registered (log in with a password first)"."""
    srv, _ = world
    tablet = tmp_path / "tablet"
    r = login(tablet, srv, "alice", PASSWORD, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pending"] is True and re.fullmatch(r"[0-9A-Z]{5}-[0-9A-Z]{5}", out["pairing_code"])
    code = out["pairing_code"]
    r = login(tablet, srv, "alice")  # a new code replaces the old one
    assert b"waits to be paired: pairing code" in r.stdout and b"registered" not in r.stdout
    code = _code(r)
    for args in (("send", "--to", "bob", "hi"), ("inbox",), ("devices",), ("status",)):
        r = sc(tablet, *args)
        assert r.returncode == 5, (args, r.stderr)
        assert f"waits to be paired with alice's devices (pairing code {code})".encode() in r.stderr, r.stderr
        assert f"hint: on that device: securecomm devices approve {code}".encode() in r.stderr
        assert b"log in with a password first" not in r.stderr


def test_the_pairing_hint_names_home_and_identity_and_login_goes_on_with_them(world, tmp_path):
    """Item 11. Before: the hint said "then run user login alice here again"; run as is, it made a new
    `default` identity with a new code instead of finishing the pairing of `tablet`."""
    srv, homes = world
    home = tmp_path / "t"
    r = login(home, srv, "alice", PASSWORD, "--identity", "tablet")
    assert r.returncode == 0, r.stderr
    assert f"then here: securecomm --home {home} user login alice --identity tablet".encode() in r.stderr
    assert sc(homes["alice"], "devices", "approve", _code(r), "--fingerprint", _fp(r)).returncode == 0
    r = login(home, srv, "alice")  # no --identity: the profile's
    assert r.returncode == 0, r.stderr
    assert b"paired" in r.stderr and not (home / "identities" / "default.key").exists()


def _digits(text: bytes) -> str:
    """The 60 digits `contacts verify` prints, as rows of four groups of five."""
    rows = re.findall(rb"^(?:\d{5} ){3}\d{5}$", text, re.M)
    assert len(rows) == 3, text
    return b"".join(rows).replace(b" ", b"").decode()


def test_verify_on_a_changed_key_shows_its_number_and_trusts_it_on_yes(world):
    """Item 6. Before: the CHANGED hint said to run `contacts verify`, which refused with the same error
    (exit 6, --yes too): the only way on was `contacts trust` first, then verify, the unsafe order."""
    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "pin alice").returncode == 0
    assert login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key", "--yes").returncode == 0
    r = sc(homes["bob"], "send", "--to", "alice", "after the reset")
    assert r.returncode == 6 and b"CHANGED" in r.stderr and b"new device" not in r.stderr
    assert b"hint: compare safety numbers with alice in person or on a call: securecomm contacts verify alice" \
        in r.stderr
    r = sc(homes["bob"], "contacts", "verify", "alice", input=b"n\n")
    assert r.returncode == 130 and b"CHANGED" in r.stderr, r.stderr
    assert sc(homes["bob"], "send", "--to", "alice", "still refused").returncode == 6  # "no" trusted nothing
    r = sc(homes["bob"], "contacts", "verify", "alice", input=b"y\n")
    assert r.returncode == 0, r.stderr
    seen_by_bob = _digits(r.stdout)
    r = sc(homes["phone"], "contacts", "verify", "bob", "--yes")
    assert r.returncode == 0, r.stderr
    assert _digits(r.stdout) == seen_by_bob  # the number bob confirmed is the new key's
    new_key = json.loads(login(homes["phone"], srv, "alice", PASSWORD, "--json").stdout)["user_key"]
    pinned = {c["name"]: c for c in json.loads(sc(homes["bob"], "contacts", "--json").stdout)}["alice"]
    assert pinned["fingerprint"] == new_key and pinned["verified"] and pinned["changed_to"] is None
    assert sc(homes["bob"], "send", "--to", "alice", "welcome back").returncode == 0


def test_a_user_sees_their_own_user_key_in_login_status_and_devices(world):
    """Item 7. Before: `user login`, `status` and `devices` showed only the device key, so the user key
    contacts pin (shown in their `contacts`) could not be compared."""
    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "pin alice").returncode == 0
    pinned = {c["name"]: c for c in json.loads(sc(homes["bob"], "contacts", "--json").stdout)}["alice"]
    key = pinned["fingerprint"]
    r = login(homes["alice"], srv, "alice")
    assert r.returncode == 0 and f"user key {key}".encode() in r.stdout, r.stdout
    assert json.loads(login(homes["phone"], srv, "alice", PASSWORD, "--json").stdout)["user_key"] == key
    r = sc(homes["phone"], "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["user"]["user_key"] == key
    r = sc(homes["alice"], "devices")
    assert r.returncode == 0 and f"alice's user key: {key}".encode() in r.stdout


def test_reset_user_key_asks_first(world):
    """Item 8. Before: --reset-user-key dropped every other device and its mail without a question."""
    srv, homes = world
    r = login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key")
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [b"securecomm: error: refusing to reset the user key without confirmation",
                                     b"securecomm: hint: pass --yes"]
    assert len(_rows(homes["alice"])) == 2  # nothing was dropped


def test_devices_have_names_and_remove_confirms_with_name_and_fingerprint(world, tmp_path):
    """Item 12 and small points. Before: every device was called `default`, `devices remove` asked
    nothing (and removed this very device without a word), and "d367" said "names no device"."""
    srv, homes = world
    tablet = tmp_path / "tablet"
    r = login(tablet, srv, "alice", PASSWORD, "--device-name", "kitchen tablet")
    r = sc(homes["alice"], "devices", "approve", _code(r), input=b"y\n")
    assert r.returncode == 0 and b"device kitchen tablet asks to join" in r.stdout, r.stdout
    assert login(tablet, srv, "alice").returncode == 0
    rows = _rows(homes["alice"])
    names = [row["name"] for row in rows]
    assert names[0] == socket.gethostname().split(".")[0] and names[2] == "kitchen tablet"
    mine = next(row for row in rows if row["this"])
    t = next(row for row in rows if row["name"] == "kitchen tablet")
    r = sc(homes["alice"], "devices", "remove", t["id"], input=b"n\n")
    assert r.returncode == 130 and f"remove device kitchen tablet ({t['id']}, {t['fingerprint']})?".encode() \
        in r.stderr, r.stderr
    r = sc(homes["alice"], "devices", "remove", t["id"])  # a script without --yes: no answer
    assert r.returncode == 130 and f"hint: securecomm devices remove {t['id']} --yes".encode() in r.stderr
    r = sc(homes["alice"], "devices", "remove", mine["id"], input=b"n\n")
    assert r.returncode == 130 and b"is THIS device" in r.stderr
    assert len(_rows(homes["alice"])) == 3
    r = sc(homes["alice"], "devices", "remove", t["id"][:4], "--yes")
    assert r.returncode == 2 and b"use 6 or more hex digits" in r.stderr
    r = sc(homes["alice"], "devices", "remove", t["id"], "--yes")
    assert r.returncode == 0 and b"removed device kitchen tablet" in r.stdout
    r = sc(homes["alice"], "devices", "remove", mine["id"], "--yes")  # this one, on purpose: warned, done
    assert r.returncode == 0 and b"is THIS device" in r.stderr and b"removed device" in r.stdout, r.stderr
    # and it keeps no copy of the account's signing key, nor prekeys (the new-user check: it kept both)
    folder = homes["alice"] / "devices" / "default"
    assert b"user key and its private prekeys were erased" in r.stderr
    assert not (folder / "user.key").exists() and list((folder / "prekeys").iterdir()) == []
    r = sc(homes["alice"], "devices")
    assert r.returncode == 5 and b"was removed from your device list" in r.stderr


def test_prompts_without_a_terminal_name_yes_and_a_replaced_code_says_so(world, tmp_path):
    """Small points. Before: `devices approve` and `contacts verify` without a terminal exited 130 with no
    hint; an old code replaced by a newer `user login` said only "no such pairing code"."""
    srv, homes = world
    tablet = tmp_path / "tablet"
    first = login(tablet, srv, "alice")
    old = _code(first)
    new = _code(login(tablet, srv, "alice"))
    r = sc(homes["alice"], "devices", "approve", old, "--fingerprint", _fp(first))
    assert r.returncode == 9 and b"use the one it showed last" in r.stderr
    r = sc(homes["alice"], "devices", "approve", new)
    assert r.returncode == 130
    assert f"hint: compare them, then: securecomm devices approve {new} --fingerprint FP".encode() in r.stderr
    r = sc(homes["bob"], "contacts", "verify", "alice")
    assert r.returncode == 130 and b"hint: compare them with alice, then: securecomm contacts verify alice --yes" \
        in r.stderr


def test_login_help_describes_devices_not_one_device_per_user(tmp_path):
    """Item 9. Before: "One device per user for now: ... the other device is logged out", --replace-key
    "(one device per user)" and an ambiguous "--reset-user-key: Without any other device"."""
    r = sc(tmp_path, "user", "login", "--help")
    assert r.returncode == 0
    text = b" ".join(r.stdout.split())
    assert b"One device per user" not in text and b"(one device per user)" not in text
    assert b"pairing code" in text and b"--device-name" in text
    assert b"Needs only the password; asks first." in text
    assert b"Only for an account from before devices" in text


def test_a_message_held_back_for_a_changed_key_is_told_as_held_not_failed(world):
    """The new-user check: `inbox` summed a message held back for its sender's changed key into
    "1 message(s) failed verification and were not printed"; it is kept on the server, not failed."""
    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "pin alice").returncode == 0
    assert login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key", "--yes").returncode == 0
    assert sc(homes["phone"], "send", "--to", "bob", "from the new key").returncode == 0
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 6, r.stderr
    last = r.stderr.decode().strip().splitlines()
    assert "securecomm: error: 1 message(s) held back: their sender's key changed, or their device list could " \
           "not be accepted; they stay on the server until you trust the new key (or the list is sorted out)" \
           in last, last
    assert b"failed verification" not in r.stderr
    assert sc(homes["bob"], "contacts", "verify", "alice", "--yes").returncode == 0
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 0 and b"from the new key" in r.stdout, r.stderr


def test_logging_in_again_before_the_approval_keeps_the_device_name(world, tmp_path):
    """The new-user check: `user login alice --device-name phone`, then the same login again without
    the flag before the approval (a new code) asked to be paired as this computer's host name."""
    srv, homes = world
    tablet = tmp_path / "tablet"
    first = _code(login(tablet, srv, "alice", PASSWORD, "--device-name", "kitchen tablet"))
    second = login(tablet, srv, "alice", PASSWORD)
    code = _code(second)
    assert code != first
    r = sc(homes["alice"], "devices", "approve", code, input=b"y\n")
    assert r.returncode == 0 and b"device kitchen tablet asks to join" in r.stdout, r.stdout
    assert login(tablet, srv, "alice").returncode == 0
    assert "kitchen tablet" in [row["name"] for row in _rows(homes["alice"])]


def test_a_running_session_notices_a_contact_who_reset_their_user_key_from_the_same_device(world):
    """The new-user check (security): bob's long `chat` / `inbox --follow` got mail from alice's laptop;
    alice then reset her user key from that laptop (its device id stays) and wrote again: shown with a
    tick under the old key, for good, because the sender's list was asked again only for an unknown
    device. Now it is asked again once older than SENDER_LIST_TTL (0 here: the test waits on events)."""
    import asyncio

    from securecomm.client.events import Alert, DirectMessage

    srv, homes = world

    async def go() -> list:
        async with _running_session(homes["bob"], "bob") as (m, events):
            await asyncio.to_thread(lambda: sc(homes["alice"], "send", "--to", "bob", "before"))
            await _until(events, lambda e: isinstance(e, DirectMessage) and e.body == b"before", "before")
            assert m.devices is not None
            m.devices.sender_ttl = 0
            await asyncio.to_thread(_reset_and_send, srv, homes["alice"], "after the reset")
            await _until(events, lambda e: isinstance(e, Alert) and e.held, "held back")
            return events

    events = asyncio.run(go())
    assert not any(isinstance(e, DirectMessage) and e.body == b"after the reset" for e in events), events
    held = next(e for e in events if isinstance(e, Alert) and e.held)
    assert held.text.startswith("message from alice held back:") and "CHANGED" in held.text, held.text


def test_removing_a_device_again_after_a_restore_goes_above_the_newest_list(world, tmp_path):
    """The new-user check: README said that after a restore, removing the device again "publishes a
    list newer than any seen"; it published the same counter again (list 3 once more, a different
    one), which bob refused ("differs from the list 3 seen before"), and alice could not remove again."""
    srv, homes = world
    backup = tmp_path / "before.db"
    assert sc(srv.home, "backup", str(backup)).returncode == 0
    phone = next(r for r in _rows(homes["alice"]) if not r["this"])
    assert sc(homes["alice"], "devices", "remove", phone["id"], "--yes").returncode == 0  # list 3
    assert sc(homes["bob"], "send", "--to", "alice", "bob saw list 3").returncode == 0
    srv.stop()
    assert sc(srv.home, "restore", "--force", str(backup)).returncode == 0  # list 2: the phone is back
    srv.start()
    r = sc(homes["alice"], "devices")
    assert r.returncode == 0 and b"the server holds list 2 of your devices, older than list 3" in r.stderr, r.stderr
    r = sc(homes["alice"], "devices", "remove", phone["id"], "--yes")
    assert r.returncode == 0, r.stderr
    r = sc(homes["bob"], "send", "--to", "alice", "after the second removal")
    assert r.returncode == 0, r.stderr  # before: exit 6, a different list 3
    assert len(_rows(homes["alice"])) == 1


def test_mail_held_for_a_changed_key_shows_once_the_key_is_trusted_in_the_running_session(world):
    """The new-user check: after /trust in chat (or `contacts trust` in another shell) the message held
    back for the changed key stayed unseen until chat was restarted."""
    import asyncio

    from securecomm.client.events import Alert, DirectMessage

    srv, homes = world

    async def go() -> tuple[list, str]:
        async with _running_session(homes["bob"], "bob") as (m, events):
            await asyncio.to_thread(lambda: sc(homes["alice"], "send", "--to", "bob", "first"))
            await _until(events, lambda e: isinstance(e, DirectMessage) and e.body == b"first", "first")
            assert m.devices is not None
            m.devices.sender_ttl = 0  # alice's list is asked again at once (see SENDER_LIST_TTL)
            await asyncio.to_thread(_reset_and_send, srv, homes["phone"], "from the new key")
            await _until(events, lambda e: isinstance(e, Alert) and e.held, "held back")
            pending = m.devices.pins.get("alice").pending
            assert pending is not None
            said = await m.trust("alice", pending.fingerprint_text)
            await _until(events, lambda e: isinstance(e, DirectMessage) and e.body == b"from the new key", "shown")
            return events, said

    events, said = asyncio.run(go())
    assert said.startswith("now trusting alice"), said
    assert sum(isinstance(e, Alert) and e.held for e in events) == 1  # told once


def test_junk_with_a_held_messages_number_does_not_get_it_deleted(world):
    """The attacker's check (stop 26): a DELIVER injected through the relays' NATS bus carried the number
    of a message bob held back (its sender's key had changed); bob's client refused the junk and
    acknowledged that number as rejected, and the server deleted the real held message. A refused message
    whose number is held here is now not acknowledged."""
    import asyncio
    import sqlite3

    from securecomm.client.events import Alert, DirectMessage
    from securecomm.wire import protocol as P

    srv, homes = world

    def waiting() -> int:
        with contextlib.closing(sqlite3.connect(srv.home / "securecomm.db")) as db:
            return int(db.execute("SELECT COUNT(*) FROM mailbox").fetchone()[0])

    async def go() -> None:
        async with _running_session(homes["bob"], "bob") as (m, events):
            await asyncio.to_thread(lambda: sc(homes["alice"], "send", "--to", "bob", "first"))
            await _until(events, lambda e: isinstance(e, DirectMessage) and e.body == b"first", "first")
            assert m.devices is not None
            m.devices.sender_ttl = 0
            await asyncio.to_thread(_reset_and_send, srv, homes["phone"], "from the new key")
            await _until(events, lambda e: isinstance(e, Alert) and e.held, "held back")
            (seq,) = m._held_told
            before = await asyncio.to_thread(waiting)
            await m._on_deliver(P.Deliver(seq, 0, "alice", b"SCE1\x02 junk with the held message's number"))
            await m.client.request("who", room="lobby")  # a round trip: an ACK sent before it was handled
            assert await asyncio.to_thread(waiting) == before  # the held message is still on the server
            assert any(isinstance(e, Alert) and "REFUSED" in e.text for e in events)  # the junk was refused

    asyncio.run(go())


def test_held_back_messages_are_told_in_full_once_then_counted(world):
    """The new user's check (stop 26): every held-back message printed the whole ~400-character STOP text
    again, on every `inbox` run; README says repeated warnings are printed once and then counted."""
    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "pin alice").returncode == 0
    assert login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key", "--yes").returncode == 0
    for i in range(3):
        assert sc(homes["phone"], "send", "--to", "bob", f"from the new key {i}").returncode == 0
    r = sc(homes["bob"], "inbox")
    text = r.stderr.decode()
    assert r.returncode == 6 and text.count("message from alice held back:") == 1, text
    assert "securecomm: error: 3 message(s) held back" in text  # every one still counted


def test_a_page_of_held_back_mail_does_not_stop_other_senders(world, tmp_path):
    """The spec-only client's check (stop 26): held-back messages are not acknowledged, and the server sends
    the next page (MAIL_BATCH, 256) only once every row of this one is; so a contact whose key changed, with
    256 messages waiting, stopped everyone else's mail until bob trusted them. The client now answers a held
    message with ACK "held" (status 3): the row stays, the page moves on."""
    import asyncio

    from securecomm.server.relay import MAIL_BATCH
    from tests.serverproc import add_user

    srv, homes = world
    assert sc(homes["bob"], "send", "--to", "alice", "pin alice").returncode == 0
    assert login(homes["phone"], srv, "alice", PASSWORD, "--reset-user-key", "--yes").returncode == 0

    async def fill() -> None:  # a whole page from the new key, quickly (one connection)
        async with _running_session(homes["phone"], "alice") as (m, _):
            for i in range(MAIL_BATCH):
                await m.send_direct("bob", f"held {i}".encode())

    asyncio.run(fill())
    add_user(srv.home, "carol")
    assert login(tmp_path / "carol", srv, "carol").returncode == 0
    assert sc(tmp_path / "carol", "send", "--to", "bob", "from carol, after the page").returncode == 0
    r = sc(homes["bob"], "inbox", "--json")
    assert r.returncode == 6, r.stderr  # held back: exit 6, as before
    assert [json.loads(x)["body"] for x in r.stdout.splitlines()] == ["from carol, after the page"]
    assert f"{MAIL_BATCH} message(s) held back".encode() in r.stderr
    assert mailbox_count(srv) >= MAIL_BATCH  # every held one still waits on the server


def test_keygen_force_on_a_logged_in_device_says_what_it_means_and_how_back(world):
    """The new-user check: `keygen --force` on a logged-in device locked it out (the server knows the old
    key as the device) and the hint said servers would simply know the new one."""
    _, homes = world
    r = sc(homes["bob"], "keygen")
    assert r.returncode == 10 and b"a server where it is a device then sees a new device" in r.stderr, r.stderr
    r = sc(homes["bob"], "keygen", "--force")
    assert r.returncode == 0, r.stderr
    text = b" ".join(r.stderr.split())
    assert b"identity 'default' was this device's key for bob" in text, text
    assert b"securecomm user login bob --reset-user-key" in text and b"put default.key.bak back" in text


def test_a_device_that_saw_the_newest_list_only_while_sending_goes_above_it_after_a_restore(world, tmp_path):
    """The re-check of the fix above: only `devices`, `devices remove` and `devices approve` noted the newest
    list; a device that saw it while sending (its own list, for the copies to its other devices) published
    the same counter again after a restore, and bob refused it (and rejected alice's waiting mail)."""
    srv, homes = world
    tablet = tmp_path / "tablet"
    _pair(srv, homes["alice"], tablet, "alice")  # list 3
    backup = tmp_path / "before.db"
    assert sc(srv.home, "backup", str(backup)).returncode == 0
    t = next(r for r in _rows(tablet) if r["this"])
    assert sc(homes["alice"], "devices", "remove", t["id"], "--yes").returncode == 0  # list 4, on the laptop
    assert sc(homes["phone"], "send", "--to", "bob", "the phone sees list 4").returncode == 0
    assert sc(homes["bob"], "inbox").returncode == 0  # bob accepted list 4
    srv.stop()
    assert sc(srv.home, "restore", "--force", str(backup)).returncode == 0  # list 3: the tablet is back
    srv.start()
    # alice writes before the list is mended: bob's client holds it back (list 3 is older than the 4 it saw),
    # kept on the server; it was REJECTED and deleted
    # (the laptop, which signed list 4, refuses to send on list 3 since stop 26; the tablet, back on it, does not)
    r = sc(homes["alice"], "send", "--to", "bob", "refused while list 3 is back")
    assert r.returncode == 6 and b"older than list 4" in r.stderr, r.stderr
    assert sc(tablet, "send", "--to", "bob", "written while list 3 was back").returncode == 0
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 6 and b"1 message(s) held back" in r.stderr and b"REJECTED" not in r.stderr, r.stderr
    assert mailbox_count(srv) >= 1  # still on the server (a restore re-hands used prekeys: it may not open later)
    r = sc(homes["phone"], "devices")
    assert r.returncode == 0 and b"the server holds list 3 of your devices, older than list 4" in r.stderr, r.stderr
    r = sc(homes["phone"], "devices", "remove", t["id"], "--yes")
    assert r.returncode == 0 and b"device list 5" in r.stdout, r.stdout
    r = sc(homes["bob"], "send", "--to", "alice", "after the restore")
    assert r.returncode == 0, r.stderr
