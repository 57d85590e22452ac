"""Room membership as the server lists it, junk room keys, receipts seen by a second session.

Real server, real TLS, real SQLite; the attacker is the client library used directly, as an
attacker would use it (no Messenger, raw frames)."""

from __future__ import annotations

import asyncio

from securecomm.cli.context import State
from securecomm.crypto import envelope
from securecomm.crypto import identity as ident
from securecomm.crypto import room as roomcrypto
from securecomm.crypto.identity import PublicIdentity
from securecomm.net.connect import connect_profile
from securecomm.net.messenger import DirectMessage, Membership, Warning
from securecomm.wire import protocol as P
from tests.test_messaging import _messenger, _until, world  # noqa: F401 - `world` is a fixture


async def _attacker(home):
    """Carol's own client and key, driven by hand: she never joins any room."""
    state = State(home=str(home))
    me = ident.load(state.paths.identity_key("default"))
    client, _ = await connect_profile(state.paths, me)
    return client, me


async def _barrier_dm(sender, to: str, events: list, text: bytes) -> None:
    """A direct message is stored and then pushed, so it reaches `to` after every frame sent before it."""
    await sender.send_direct(to, text)
    await _until(lambda: any(isinstance(e, DirectMessage) and e.body == text for e in events), 20)


async def _raw_events_until_deliver(client) -> list:
    got: list = []
    while not any(isinstance(e, P.Deliver) for e in got):
        got.append(await asyncio.wait_for(client.events.get(), 20))
    return got


def test_room_key_from_a_non_member_is_ignored_and_gets_nothing_back(world):  # noqa: F811
    _, homes = world

    async def go():
        ev_a, ev_b = [], []
        a, b = await _messenger(homes["alice"], ev_a), await _messenger(homes["bob"], ev_b)
        carol, carol_me = await _attacker(homes["carol"])
        try:
            await a.join("lobby")
            await b.join("lobby")
            await _until(lambda: "bob" in a.rooms["lobby"].keys and "alice" in b.rooms["lobby"].keys)
            # carol forges a perfectly valid sender key for #lobby, sealed and signed by her, to alice
            line = (await carol.request("lookup", user="alice"))["identity"]
            forged = envelope.seal(roomcrypto.SenderKey.generate().encode("lobby"), carol_me,
                                   PublicIdentity.from_line(line))
            carol.send_event(P.RoomKey("alice", forged))
            carol_msn = await _messenger(homes["carol"], [])  # only to send the barrier message
            await _barrier_dm(carol_msn, "alice", ev_a, b"after the forged key")
            carol_msn.pump.cancel()
            await carol_msn.client.close()
            assert "carol" not in a.rooms["lobby"].members
            assert "carol" not in a.rooms["lobby"].keys
            assert any(isinstance(e, Warning) and "carol" in e.text for e in ev_a)
            # bob leaves: alice rotates and hands the new key to the members the server lists only
            old = a.rooms["lobby"].my_key.key_id
            await b.leave("lobby")
            await _until(lambda: a.rooms["lobby"].my_key.key_id != old)
            await a.send_direct("carol", b"barrier for carol")
            got = await _raw_events_until_deliver(carol)
            assert [e for e in got if isinstance(e, P.RoomKey)] == []  # alice never handed carol a key
            assert Membership("lobby", "bob", "joined") in ev_a
            assert Membership("lobby", "bob", "left") in ev_a
            assert await a.who("lobby") == ["alice"]
        finally:
            for m in (a, b):
                m.pump.cancel()
                await m.client.close()
            await carol.close()

    asyncio.run(go())


def test_junk_room_keys_are_collapsed_into_few_warnings(world):  # noqa: F811
    _, homes = world

    async def go():
        ev_a, ev_c = [], []
        a = await _messenger(homes["alice"], ev_a)
        c = await _messenger(homes["carol"], ev_c)
        try:
            await a.join("lobby")
            await c.join("lobby")
            await _until(lambda: "carol" in a.rooms["lobby"].keys)
            for i in range(30):  # a member's client sends garbage where sealed keys belong
                c.client.send_event(P.RoomKey("alice", bytes([i]) * 300))
            await _barrier_dm(c, "alice", ev_a, b"after the junk")
            warnings = [e for e in ev_a if isinstance(e, Warning) and "room key" in e.text]
            assert 1 <= len(warnings) <= 2, warnings  # the first, and "10 so far"; not 30 lines
            assert "carol" in a.rooms["lobby"].keys  # her real key still stands
        finally:
            for m in (a, c):
                m.pump.cancel()
                await m.client.close()

    asyncio.run(go())


def test_receipt_for_a_message_sent_from_another_session_is_not_a_failure(world):  # noqa: F811
    _, homes = world

    async def go():
        ev_a1, ev_a2, ev_b = [], [], []
        a1 = await _messenger(homes["alice"], ev_a1)
        a2 = await _messenger(homes["alice"], ev_a2)  # alice's second chat window
        b = await _messenger(homes["bob"], ev_b)
        try:
            _, msg_id = await a1.send_direct("bob", b"from the first session")
            receipt = await a1.wait_delivered(msg_id, 20)
            assert receipt.verified
            await _barrier_dm(b, "alice", ev_a2, b"reply after the receipt")  # a2 has seen the receipt by now
            assert not [e for e in ev_a2 if isinstance(e, Warning)], ev_a2
        finally:
            for m in (a1, a2, b):
                m.pump.cancel()
                await m.client.close()

    asyncio.run(go())


def test_a_bad_room_name_is_called_a_room_name_by_the_server(world):  # noqa: F811
    from securecomm.errors import NotFoundError

    _, homes = world

    async def go():
        carol, _ = await _attacker(homes["carol"])
        try:
            for op in ("join", "who", "leave"):
                try:
                    await carol.request(op, room="bad room")
                except NotFoundError as e:
                    assert e.message == "server: room name 'bad room' must be 1-32 characters of a-z 0-9 _ . -"
                else:
                    raise AssertionError(f"{op} accepted a bad room name")
            assert (await carol.request("who", room="lobby"))["members"] == []  # still served
        finally:
            await carol.close()

    asyncio.run(go())
