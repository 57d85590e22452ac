"""Rooms on version 2 (issue 12; docs/PROTOCOL.md 4.3, 6.6, 6.13): alice in #lobby from two devices, bob
from one. Every sender key travels in a ROOM_KEY envelope version 2 sealed to a one-time prekey of ONE
member device, whose private half the receiving device erases once it recorded the key; a room line from
any device is read by every other device (alice's own other device included); a device that leaves the
room (its user still in from another) gets no later key. Real server, real TLS, real SQLite.

On the code before this (integ at 5909330) a room key was a version-1 envelope sealed to the member's
long-term identity, and a second device of a member in the same room was a CHANGED key to the others
(one identity per user): `test_every_device_reads_every_other_device` fails there.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from securecomm.client.events import Alert, RoomText
from securecomm.crypto import envelope
from securecomm.crypto import prekeys as K
from securecomm.crypto import room as roomcrypto
from securecomm.wire import protocol as P
from tests.serverproc import ServerProc, users_logged_in
from tests.test_messaging import _close, _messenger, _until
from tests.test_multidevice_cli import pair_second_device


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    homes["phone"] = tmp_path / "alice-phone"
    pair_second_device(srv, homes["alice"], homes["phone"], "alice")
    yield srv, homes
    srv.stop(signal.SIGKILL)


def _one_time_keys(home: Path) -> set[str]:
    return {p.name for p in (home / "devices" / "default" / "prekeys").iterdir() if p.name.startswith("1-")}


def _spy(m, sent: list[P.RoomKey]) -> None:
    """Record the ROOM_KEY frames a Messenger writes (what crosses the server), then write them as before."""
    write = m.client.send_event

    def send_event(ev):
        if isinstance(ev, P.RoomKey):
            sent.append(ev)
        write(ev)

    m.client.send_event = send_event


def _texts(events: list) -> list[tuple[str, bytes]]:
    return [(e.sender, e.body) for e in events if isinstance(e, RoomText)]


def test_every_device_reads_every_other_device(world):
    _, homes = world

    async def go():
        ev = {n: [] for n in ("alice", "phone", "bob")}
        ms = {n: await _messenger(homes[n], ev[n]) for n in ev}
        sent: list[P.RoomKey] = []
        for m in ms.values():
            _spy(m, sent)
        held = {n: _one_time_keys(homes[n]) for n in ms}
        try:
            for m in ms.values():
                await m.join("lobby")
            laptop, phone = ms["alice"].me.public.fingerprint, ms["phone"].me.public.fingerprint
            bob = ms["bob"]
            # each device holds the key of each other device: bob both of alice's, alice's two each other's
            await _until(lambda: set(bob.rooms["lobby"].keys.get("alice", {})) == {laptop, phone}
                         and set(ms["alice"].rooms["lobby"].keys.get("alice", {})) == {phone}
                         and set(ms["phone"].rooms["lobby"].keys.get("alice", {})) == {laptop}
                         and all("bob" in ms[n].rooms["lobby"].keys for n in ("alice", "phone")), 20)
            assert len(sent) == 6  # three devices, each keyed by the two others: one envelope per device
            for frame in sent:  # each a version-2 envelope, to a one-time prekey of one device
                env = K.parse_v2(frame.envelope)
                assert env.header.key_kind == K.ONE_TIME and env.header.prekey_id >= 1
            # the one-time private keys those envelopes used are erased, and only they
            for n, m in ms.items():
                used = {f"1-{K.parse_v2(f.envelope).header.prekey_id}.key" for f in sent
                        if K.parse_v2(f.envelope).header.recipient == m.me.public.fingerprint}
                assert len(used) == 2
                await _until(lambda n=n, used=used: not _one_time_keys(homes[n]) & used)
                assert _one_time_keys(homes[n]) == held[n] - used

            await ms["phone"].send_room("lobby", b"from the phone")
            await bob.send_room("lobby", b"from bob")
            await _until(lambda: ("alice", b"from the phone") in _texts(ev["bob"])
                         and ("alice", b"from the phone") in _texts(ev["alice"])
                         and ("bob", b"from bob") in _texts(ev["alice"])
                         and ("bob", b"from bob") in _texts(ev["phone"]), 20)
            assert not [e for n in ev for e in ev[n] if isinstance(e, Alert)], ev
        finally:
            await _close(*ms.values())

    asyncio.run(go())


def test_a_device_that_leaves_gets_no_later_key_and_its_user_stays(world):
    _, homes = world

    async def go():
        ev = {n: [] for n in ("alice", "phone", "bob")}
        ms = {n: await _messenger(homes[n], ev[n]) for n in ev}
        try:
            for m in ms.values():
                await m.join("lobby")
            bob, phone = ms["bob"], ms["phone"]
            await _until(lambda: len(bob.rooms["lobby"].keys.get("alice", {})) == 2
                         and "bob" in phone.rooms["lobby"].keys, 20)
            (old,) = phone.rooms["lobby"].keys["bob"].values()
            await phone.leave("lobby")
            await _until(lambda: len(bob.rooms["lobby"].members.get("alice", {})) == 1)
            assert "alice" in bob.rooms["lobby"].members  # her laptop is still in: no "left" line
            assert not [e for e in ev["bob"] if getattr(e, "event", None) == "left"]
            # nor on her laptop's own screen (the spec-only client's check: "* alice left #lobby" there)
            await _until(lambda: any(str(e) == "another device of yours left #lobby" for e in ev["alice"]), 20)
            assert not [e for e in ev["alice"] if getattr(e, "event", None) == "left"], ev["alice"]
            await bob.send_room("lobby", b"the phone must not read this")  # rotates first: the phone had the key
            await _until(lambda: ("bob", b"the phone must not read this") in _texts(ev["alice"]), 20)
            assert bob.rooms["lobby"].my_key.key_id != old.key_id
            sent = next(e for e in ev["alice"] if isinstance(e, RoomText))
            assert sent.body == b"the phone must not read this"
            await ms["alice"].send_direct("alice", b"barrier")  # the phone gets its copy after any room key
            await _until(lambda: any(getattr(e, "body", None) == b"barrier" for e in ev["phone"]), 20)
            assert "lobby" not in phone.rooms
            assert not [e for e in ev["phone"] if isinstance(e, (RoomText, Alert))], ev["phone"]
        finally:
            await _close(*ms.values())

    asyncio.run(go())


def test_a_version_1_room_key_is_refused_by_name(world):
    """A ROOM_KEY sealed to the long-term identity (version 1) is never opened on version 2 (6.6)."""
    _, homes = world

    async def go():
        ev_a, ev_b = [], []
        a, b = await _messenger(homes["alice"], ev_a), await _messenger(homes["bob"], ev_b)
        try:
            await a.join("lobby")
            await b.join("lobby")
            await _until(lambda: "bob" in a.rooms["lobby"].keys, 20)
            old = dict(a.rooms["lobby"].keys["bob"])
            forged = envelope.seal(roomcrypto.SenderKey.generate().encode("lobby"), b.me, a.me.public)
            a.client.events.put_nowait(P.RoomKey("bob", forged))  # as if the server had relayed it
            await _until(lambda: any(isinstance(e, Alert) for e in ev_a))
            (alert,) = [e for e in ev_a if isinstance(e, Alert)]
            assert "version 1 envelope refused" in alert.text and "bob" in alert.text
            assert a.rooms["lobby"].keys["bob"] == old  # bob's real key still stands
        finally:
            await _close(a, b)

    asyncio.run(go())


def test_a_flood_of_unsigned_notices_is_counted_and_refills_are_bounded(world):
    """The attacker's check (a hostile server): 200 unsigned device NOTICEs printed 200 lines, and 50
    prekeys_low NOTICEs per claim made the device generate, fsync and keep about 5,000 private keys."""
    from securecomm.client.events import Notice
    from securecomm.crypto import prekeys as K

    _, homes = world

    async def go() -> tuple[int, int, int]:
        events: list = []
        bob = await _messenger(homes["bob"], events)
        try:
            before = len(_one_time_keys(homes["bob"]))
            for i in range(200):
                bob.client.events.put_nowait(P.Notice("device_added", "bob", bytes([i % 256]) * 32))
            for _ in range(50):
                bob.client.events.put_nowait(P.Notice("prekeys_low", "bob", None))
            await bob.send_direct("bob", b"barrier")  # handled in order: every notice is handled by now
            await _until(lambda: any(getattr(e, "body", None) == b"barrier" for e in events), 20)
            shown = [e for e in events if isinstance(e, Notice) and "your account" in str(e)]
            counted = [e for e in events if isinstance(e, Alert) and "device notices past" in str(e)]
            return len(shown), len(counted), len(_one_time_keys(homes["bob"])) - before
        finally:
            await _close(bob)

    shown, counted, made = asyncio.run(go())
    assert shown == 5 and 1 <= counted <= 3  # the first few, then 1st, 10th, 100th counts
    assert made <= K.MAX_BATCH  # one refill at most, not one per NOTICE
