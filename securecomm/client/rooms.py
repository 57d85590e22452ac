"""Rooms on the client: join, sender keys, membership churn, members held back for a changed key.

`Rooms` is the room half of `Messenger` (client/messenger.py), kept apart so each file stays
readable; it uses the Messenger's connection, identity, contacts and `emit`, declared below.

Members are devices (docs/PROTOCOL.md 4.3, 6.13): the server lists each session in a room with its
device identity, so a user may be in a room from several devices. Each device has its own sender
key; a room message names the device that sent it (the sender fingerprint of its header), and it is
read with that device's key. On version 2 (`v2`: the server serves devices and this device has a
user key) a member device is believed only when it is on its user's device list verified under the
pinned user key (our own under our own user key), and our sender key goes to each member device in
its own ROOM_KEY envelope version 2, sealed to a one-time prekey of that device (roomkeys.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from securecomm.client import answers
from securecomm.client import roomkeys as RK
from securecomm.client.connection import Client
from securecomm.client.directory import Contacts
from securecomm.client.directv2 import DeviceDirectory, erase, open_with_prekey
from securecomm.client.events import Alert, Membership, Notice, RoomText, printable
from securecomm.crypto import envelope
from securecomm.crypto import prekeys as K
from securecomm.crypto import room as roomcrypto
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import ChangedKeyError, SecurecommError, UnknownSenderError, UnsafePermissionsError
from securecomm.wire import protocol as P

#: How long a room key may wait for the join that lists its sender (the join's RESULT and the
#: key race on the client); as long as any reply may take.
JOIN_WAIT = 30.0
#: A burst of joins and leaves in a room is settled once it has been quiet this long: one key
#: rotation and one line per user instead of one per event (see Messenger._settle). Short, so a
#: real leave still rotates at once to a person; a message we send settles first anyway.
SETTLE_QUIET = 0.3
#: Never later than this after the first unsettled change, so non-stop churn still settles.
SETTLE_MAX = 2.0
#: An unknown room event's kind is named in its warning cut to this many characters (it is the server's word).
MAX_SHOWN_KIND = 32


Device = tuple[str, bytes]  # (user, device identity fingerprint): one member device of a room


@dataclass
class RoomState:
    """One joined room. `members` holds only devices the server listed for the room (join result
    or ROOM_EVENT), per user: sender keys are accepted only from them and ours is handed only to them."""

    name: str
    my_key: roomcrypto.SenderKey = field(default_factory=roomcrypto.SenderKey.generate)
    #: user -> device fingerprint -> that device's sender key
    keys: dict[str, dict[bytes, roomcrypto.SenderKey]] = field(default_factory=dict)
    #: user -> device fingerprint -> its identity (our own other devices in the room under our name)
    members: dict[str, dict[bytes, PublicIdentity]] = field(default_factory=dict)
    #: Set once the join's member list is in; room traffic waits for it (it can overtake the RESULT).
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # -- membership changes not settled yet (see Messenger._settle) --
    #: Someone left since our key was handed out: the next key must be one they never had.
    rotate: bool = False
    #: Member devices that joined and have not been handed our current key yet.
    unkeyed: set[Device] = field(default_factory=set)
    #: user -> [joins and leaves since the line shown for them, the latest of those events]
    churn: dict[str, list[Any]] = field(default_factory=dict)
    settle: asyncio.TimerHandle | None = None
    settle_since: float | None = None  # loop time of the first unsettled change
    rotations: int = 0  # times our key was replaced (a count for tests and benchmarks)
    #: Listed members whose key CHANGED from the one pinned (user -> the key the server listed):
    #: no key to or from them until the user trusts it (`contacts trust`, or /trust in chat).
    held: dict[str, PublicIdentity] = field(default_factory=dict)
    #: Held while our key is handed out, and by a room message while it settles and seals: a message
    #: never overtakes the key it is sealed with (key work on version 2 waits for prekey claims).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def devices(self) -> set[Device]:
        return {(user, fp) for user, devs in self.members.items() for fp in devs}

    def sender_key(self, user: str, device: bytes) -> roomcrypto.SenderKey | None:
        return self.keys.get(user, {}).get(device)

    def drop(self, user: str, device: bytes | None) -> bool:
        """Forget a device (every device of `user` for None); True if the user has none left here."""
        devs, keys = self.members.get(user, {}), self.keys.get(user, {})
        for fp in list(devs) if device is None else [device]:
            devs.pop(fp, None)
            keys.pop(fp, None)
            self.unkeyed.discard((user, fp))
        if not devs:
            self.members.pop(user, None)
            self.keys.pop(user, None)
        return user not in self.members



class Rooms:
    """The room operations of a Messenger (see the module docstring)."""

    client: Client
    me: PrivateIdentity
    user: str
    contacts: Contacts
    emit: Callable[[Any], None]
    rooms: dict[str, RoomState]
    held_keys: dict[str, P.RoomKey]
    _directory: dict[str, PublicIdentity]
    settle_quiet: float
    settle_max: float
    devices: DeviceDirectory | None
    _settling: set[asyncio.Task[None]]

    if TYPE_CHECKING:
        @property
        def v2(self) -> bool: ...
        async def identity_of(self, user: str) -> PublicIdentity: ...
        def _warn_counted(self, kind: str, text: str, *, failed: bool = True) -> None: ...
        async def _refill_when_low(self) -> None: ...
        def need_user_key(self) -> None: ...
        async def replay_held_mail(self) -> None: ...

    # -- rooms --------------------------------------------------------------------------------
    async def join(self, room: str) -> list[str]:
        self.need_user_key()
        name = room.lower()
        fresh = name not in self.rooms
        state = self.rooms.setdefault(name, RoomState(name))  # before the request: keys may overtake RESULT
        try:
            data = await self.client.request("join", room=name)
        except BaseException:
            if fresh:
                state.ready.set()  # nobody waits for a join that failed
                self.rooms.pop(name, None)
            raise
        names = []  # those our key goes to, and us: a skipped member is named only in its warning
        try:
            async with state.lock:
                for user, line in self._members(data, f"#{name}"):
                    if self._is_me(user, line):
                        names.append(user)
                    elif await self._add_member(state, user, line):
                        names.append(user)
                        state.unkeyed.add((user, PublicIdentity.from_line_cached(line).fingerprint))
                await self._hand_out(state)
        finally:
            state.ready.set()
        return list(dict.fromkeys(names))

    async def leave(self, room: str) -> None:
        await self.client.request("leave", room=room)
        self.rooms.pop(room, None)

    async def who(self, room: str) -> list[str]:
        data = await self.client.request("who", room=room)
        return [user for user, _ in self._members(data, f"#{room}")]

    def _members(self, data: Any, where: str) -> list[tuple[str, str]]:
        """(user, identity line) of each well-formed member entry; a bad one is skipped with a
        warning, so one broken entry cannot end chat or hide the other members."""
        good = []
        for entry in answers.items(answers.obj(data, "the member list"), "members", "the member list"):
            try:
                good.append(answers.member(entry))
            except SecurecommError as e:
                self.emit(Alert(f"skipped a member of {where}: {e.message}"))
        return good

    def _is_me(self, user: str, line: str | None) -> bool:
        """This device (or, on version 1, this user: one key per account), not a member to key."""
        if user != self.user:
            return False
        if not self.v2 or line is None:
            return True
        try:
            return same(PublicIdentity.from_line_cached(line).fingerprint, self.me.public.fingerprint)
        except SecurecommError:
            return True  # our own name with a malformed line: nothing to hand a key to

    async def _add_member(self, state: RoomState, user: str, line: str) -> bool:
        try:
            identity = PublicIdentity.from_line_cached(line)
            if self.v2:
                await self._listed_device(user, identity)
            else:
                self.contacts.check(user, identity)
        except ChangedKeyError as e:  # counted too: a member with a changed key may join and leave in a loop
            state.held[user] = identity
            self._warn_counted("members with a changed key", f"{user} in #{state.name}: {e.message}. {e.hint}")
            return False
        except SecurecommError as e:  # a malformed identity line or name, or a device not listed: skipped
            self._warn_counted("members skipped", f"skipped {user} in #{state.name}: {e.message}")
            return False
        state.members.setdefault(user, {})[identity.fingerprint] = identity
        state.held.pop(user, None)  # back with the pinned key, or trusted since
        return True

    async def _listed_device(self, user: str, identity: PublicIdentity) -> None:
        """Version 2: the member's device must be on its user's list, verified under the pinned user
        key (our own other devices under our own user key), as for a direct message's sender (6.13)."""
        assert self.devices is not None
        answers.check_user_name(user)
        listed = await self.devices.sender_devices(self.client, user, identity.fingerprint)
        if not any(same(c.device_id, identity.fingerprint) for c in listed):
            raise UnknownSenderError(f"device {identity.fingerprint.hex()[:12]} is not on {user}'s device list")

    async def _hand_out(self, state: RoomState) -> None:
        """Our current key to every member device in `state.unkeyed` (the caller holds `state.lock`)."""
        targets = state.unkeyed & state.devices()
        state.unkeyed.clear()
        if not targets:
            return
        body = state.my_key.encode(state.name, self.user if self.v2 else None)
        if not self.v2:
            for user, fp in sorted(targets):
                self.client.send_event(P.RoomKey(user, envelope.seal(body, self.me, state.members[user][fp])))
            return
        assert self.devices is not None
        for user, why in await RK.hand_out(self.client, self.me, self.devices, body, targets):
            self._warn_counted("room keys not handed out", f"your key for #{state.name} did not reach {user}: {why}")

    async def _joined_rooms(self) -> None:
        """Wait for joins in progress, so that their member lists are known."""
        for state in list(self.rooms.values()):
            if not state.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.ready.wait(), JOIN_WAIT)

    async def _on_room_event(self, ev: P.RoomEvent) -> None:
        await self._joined_rooms()
        await self.recheck_held()  # a `contacts trust` done meanwhile in another shell
        if ev.event not in ("joined", "left"):
            self._warn_counted("unknown room events", f"ignored a room event of a kind this version does not "
                               f"know: {printable(ev.event[:MAX_SHOWN_KIND].encode())}", failed=False)
            return
        state = self.rooms.get(ev.room)
        if state is None or self._is_me(ev.user, ev.identity):
            return
        try:
            answers.check_user_name(ev.user)  # a name no account can have is no member, and no line to show
        except SecurecommError as e:
            self._warn_counted("room events about malformed names", f"ignored a join/leave in #{ev.room}: {e.message}")
            return
        was_in = ev.user in state.members
        if ev.event == "joined" and ev.identity:
            if not await self._add_member(state, ev.user, ev.identity):
                return  # skipped, and the warning says why: no key for them, and no line saying they are in
            state.unkeyed.add((ev.user, PublicIdentity.from_line_cached(ev.identity).fingerprint))
            if was_in:  # another device of someone already in: keyed, and no line
                await self._settle_later(state)
                return
        elif ev.event == "left" and state.held.pop(ev.user, None) is not None:
            if not any(ev.user in s.held for s in self.rooms.values()):
                self.held_keys.pop(ev.user, None)
        elif ev.event == "left" and was_in:
            gone = self._left_device(ev.identity)
            state.rotate = True  # whoever left must not read what is said from now on: see seal_room
            if not state.drop(ev.user, gone):  # one device of theirs left, another is still in: no line
                await self._settle_later(state)
                return
        if ev.user == self.user:  # another device of this account: this one is still in (4.3), so never
            # "bob left" on bob's own screen (the spec-only client's check)
            self.emit(Notice(f"another device of yours {ev.event} #{state.name}"))
        else:
            self._membership_line(state, ev.user, ev.event)
        await self._settle_later(state)

    @staticmethod
    def _left_device(line: str | None) -> bytes | None:
        """The device a "left" event names (4.3); None (every device of the user) if it names none."""
        if line is None:
            return None
        try:
            return PublicIdentity.from_line_cached(line).fingerprint
        except SecurecommError:
            return None

    # Theory of operation: joins and leaves are settled in bursts.
    #
    #   ROOM_EVENT --> members updated at once; key work and repeated lines wait
    #       |             (each event restarts a SETTLE_QUIET timer, capped at SETTLE_MAX after the first)
    #       v
    #   quiet, or we are about to send a room message --> _settle: if anyone left, ONE new key;
    #       our key to each member present NOW (never to one who has left again); one summary
    #       line per user whose joins/leaves were collapsed.
    #
    # So a member who joins and leaves 2,000 times costs each client one rotation and two lines,
    # not 2,000 rotations (a new key HPKE-sealed to every member each) and 4,000 lines. Security
    # is kept because seal_room settles first: a message typed after a leave always uses a key
    # the leaver never received.

    def _membership_line(self, state: RoomState, user: str, event: str) -> None:
        """The first change of a user in a burst is shown at once; the rest are counted (_settle)."""
        seen = state.churn.get(user)
        if seen is None:
            state.churn[user] = [0, event]
            self.emit(Membership(state.name, user, event))
        else:
            seen[0], seen[1] = seen[0] + 1, event

    async def _settle_later(self, state: RoomState) -> None:
        if self.settle_quiet <= 0:  # no coalescing (each change settled at once): the benchmark's baseline
            await self._settle(state)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        state.settle_since = now if state.settle_since is None else state.settle_since
        if state.settle is not None:
            state.settle.cancel()
        delay = min(self.settle_quiet, max(0.0, state.settle_since + self.settle_max - now))
        state.settle = loop.call_later(delay, self._settle_on_timer, state)

    def _settle_on_timer(self, state: RoomState) -> None:
        if self.client.closed or self.rooms.get(state.name) is not state:
            return  # the connection ended or we left: the next join starts afresh
        task = asyncio.ensure_future(self._settle_quietly(state))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_quietly(self, state: RoomState) -> None:
        with contextlib.suppress(SecurecommError):  # a write to a connection failing now: the pump reports it
            await self._settle(state, timer=True)

    async def _settle(self, state: RoomState, *, timer: bool = False) -> None:
        async with state.lock:
            await self._settle_locked(state, timer=timer)

    async def _settle_locked(self, state: RoomState, *, timer: bool = False) -> None:
        """Hand out our key after a burst of joins and leaves (a new one if anyone left).

        On version 2 a rotation claims a prekey of every member device (one `prekeys_claim` per
        member), so the timer does not rotate: the new key is made and handed out when we next send
        a room message (seal_room settles first, so that message still uses a key no leaver had).
        A member who joins and leaves in a loop then costs us claims only as often as we speak,
        never past the server's claim limit (6.7) by itself; joiners meanwhile wait for that key."""
        if state.settle is not None:
            state.settle.cancel()
        state.settle, state.settle_since = None, None
        if state.rotate and not (timer and self.v2):
            state.my_key, state.rotate, state.rotations = roomcrypto.SenderKey.generate(), False, state.rotations + 1
            state.unkeyed = state.devices()
        if not state.rotate:
            await self._hand_out(state)
        for user, (more, event) in state.churn.items():
            if more:  # one further change is shown as itself (a quick rejoin), more as a count
                self.emit(Membership(state.name, user, event, more if more > 1 else 0))
        state.churn.clear()

    async def _on_room_key(self, ev: P.RoomKey) -> None:
        """Accept a sender key only from a member the server lists for the key's room.

        A key from anyone else is ignored: it never makes its sender a member, so we never
        hand them our own key (they would read the room while `who` does not list them)."""
        await self._joined_rooms()
        if self.v2:
            await self._on_room_key_v2(ev)
            return
        if self._is_held(ev.user):
            await self.recheck_held()  # trusted meanwhile elsewhere? then this key is accepted below
        sender = self._v1_member(ev.user)
        if sender is None and self._is_held(ev.user):
            self.held_keys[ev.user] = ev  # the latest only: opened if the user trusts the new key
            self._warn_counted("room keys held back", f"held back a room key from {ev.user}: "
                               f"{self._changed_advice(ev.user)}")
            return
        if sender is None:
            self._junk_room_key(ev.user, "they are not a member of a room you are in")
            return
        self._accept_room_key(ev, sender)

    def _v1_member(self, user: str) -> PublicIdentity | None:
        """Version 1: the one identity a user is listed with in any of our rooms."""
        return next((d for s in self.rooms.values() for d in s.members.get(user, {}).values()), None)

    def _accept_room_key(self, ev: P.RoomKey, sender: PublicIdentity) -> None:
        try:
            opened = envelope.open_envelope(ev.envelope, self.me, sender)
            room, key = roomcrypto.SenderKey.decode(opened.body)
        except SecurecommError as e:
            self._junk_room_key(ev.user, e.message)
            return
        if self._room_of_key(ev.user, sender.fingerprint, room) is None:
            self._junk_room_key(ev.user, "they are not a member of that room")
            return
        self.rooms[room].keys.setdefault(ev.user, {})[sender.fingerprint] = key

    def _room_of_key(self, user: str, device: bytes, room: str) -> RoomState | None:
        state = self.rooms.get(room)
        return state if state is not None and device in state.members.get(user, {}) else None

    async def _on_room_key_v2(self, ev: P.RoomKey) -> None:
        """A sender key in a ROOM_KEY envelope version 2 (6.6), from a member device of one of our rooms,
        opened with our one-time prekey. In the order of 6.13: the key is recorded, then the one-time
        private key erased, then the key is used (by the room messages that follow)."""
        assert self.devices is not None
        try:
            env = K.parse_v2(ev.envelope)  # version 1 is refused by name, never opened with the long-term key
        except SecurecommError as e:
            self._junk_room_key(ev.user, e.message)
            return
        device = next((s.members[ev.user][env.header.sender] for s in self.rooms.values()
                       if env.header.sender in s.members.get(ev.user, {})), None)
        if device is None and self._is_held(ev.user):
            # the latest only, unopened (its one-time key kept): opened if the user trusts the new key
            self.held_keys[ev.user] = ev
            self._warn_counted("room keys held back", f"held back a room key from {ev.user}: "
                               f"{self._changed_advice(ev.user)}")
            return
        if device is None:
            self._junk_room_key(ev.user, "that device is not a member of a room you are in")
            return
        try:
            opened, tried = open_with_prekey(env, self.me, device, self.devices.keys)
        except UnsafePermissionsError:
            raise  # our key files, not the sender's fault: stop (Messenger.run), the key is not thrown away
        except SecurecommError as e:
            self._junk_room_key(ev.user, e.message)
            return
        state: RoomState | None = None
        why = "they are not a member of that room"
        try:
            room, key = roomcrypto.read_sender_key(opened.body, ev.user)
            state = self._room_of_key(ev.user, device.fingerprint, room)
            if state is not None:
                state.keys.setdefault(ev.user, {})[device.fingerprint] = key  # recorded ...
        except SecurecommError as e:
            why = e.message
        finally:
            erase(self.devices.keys, tried)  # ... then the one-time key erased (zeros, synced), whatever the outcome
            # no ACK to wait for (a ROOM_KEY has none): the emptied file is unlinked at once
            self.devices.keys.after_ack()
        if state is None:
            self._junk_room_key(ev.user, why)
        if tried:
            await self._refill_when_low()

    # -- members whose key changed ---------------------------------------------------------------
    def _is_held(self, user: str) -> bool:
        return any(user in s.held for s in self.rooms.values())

    def _changed_advice(self, user: str) -> str:
        return (f"{user}'s key CHANGED; verify the new fingerprint with {user} out of band, then run: "
                f"securecomm contacts trust {user} (or /trust {user} in chat)")

    async def recheck_held(self) -> list[str]:
        """Members held back for a changed key that the user has trusted since (contacts.json, or on
        version 2 the user-key pins, reloaded when another process saved them): they become members,
        get our sender key, and the key they sent while held is opened. Returns their names."""
        if not self._is_held_any():
            return []
        if self.v2:
            return await self._recheck_held_v2()
        promoted = []
        for state in self.rooms.values():
            for user, identity in list(state.held.items()):
                try:
                    self.contacts.check(user, identity)
                except ChangedKeyError:
                    continue  # still not trusted
                except SecurecommError:
                    del state.held[user]
                    continue
                del state.held[user]
                state.members[user] = {identity.fingerprint: identity}
                self.client.send_event(P.RoomKey(user, envelope.seal(state.my_key.encode(state.name), self.me,
                                                                     identity)))
                promoted.append(user)
                self.emit(Notice(f"now trusting {user}'s new key {identity.fingerprint_text}; "
                                 f"sent them your key for #{state.name}"))
        for user in promoted:
            stashed = self.held_keys.pop(user, None)
            sender = self._v1_member(user)
            if stashed is not None and sender is not None:
                self._accept_room_key(stashed, sender)
        return promoted

    def _is_held_any(self) -> bool:
        return any(s.held for s in self.rooms.values())

    async def _recheck_held_v2(self) -> list[str]:
        """Version 2: a member is held while its pin names a changed user key (pins.py). Once that key
        is trusted (here with /trust, or `contacts trust`/`contacts verify` in another shell), the
        held device is checked again against the user's list under the newly pinned key."""
        assert self.devices is not None
        promoted = []
        for state in list(self.rooms.values()):
            for user, identity in list(state.held.items()):
                pin = self.devices.pins.get(user)
                if pin is None or pin.pending is not None:
                    continue  # still not trusted
                del state.held[user]
                self.devices.forget(user)
                if not await self._add_member(state, user, identity.line):
                    continue  # held again (changed once more) or skipped, and the warning says why
                state.unkeyed.add((user, identity.fingerprint))
                await self._settle_later(state)
                promoted.append(user)
                self.emit(Notice(f"now trusting {user}'s new user key {pin.user_key.fingerprint_text}; "
                                 f"your key for #{state.name} goes to them"))
        for user in promoted:
            stashed = self.held_keys.pop(user, None)
            if stashed is not None:
                await self._on_room_key_v2(stashed)
        return promoted

    async def trust(self, user: str, fingerprint: str | None) -> str:
        """/trust in chat: without a fingerprint, show the changed key; with the one shown (copied
        after checking it with them), trust it as `contacts trust` does and key them in."""
        import hmac

        if self.v2:
            return await self._trust_v2(user, fingerprint)
        contact = self.contacts.get(user)
        if contact is None or contact.pending is None:
            return f"{user}'s key has not changed; nothing to trust"
        new = contact.pending.fingerprint_text
        if fingerprint is None:
            return (f"{user}'s key CHANGED from {contact.identity.fingerprint_text} to {new}. Check {new} with "
                    f"{user} out of band (in person, by phone), then type: /trust {user} {new}")
        if not hmac.compare_digest(fingerprint.encode(), new.encode()):
            return f"that is not {user}'s new fingerprint ({new}); nothing trusted"
        self.contacts.trust(user)
        self._directory.pop(user, None)
        if not await self.recheck_held():
            return f"now trusting {user} {new}"
        return f"now trusting {user} {new}; CHANGED cleared"

    async def _trust_v2(self, user: str, fingerprint: str | None) -> str:
        """/trust on version 2: the changed USER key pinned for `user` (pins.py), as `contacts trust`."""
        import hmac

        assert self.devices is not None
        pin = self.devices.pins.get(user)
        if pin is None or pin.pending is None:
            return f"{user}'s user key has not changed; nothing to trust"
        new = pin.pending.fingerprint_text
        if fingerprint is None:
            loud = "you VERIFIED them before: " if pin.verified else ""
            return (f"{loud}{user}'s user key CHANGED from {pin.user_key.fingerprint_text} to {new}. Check {new} "
                    f"with {user} out of band (in person, by phone; or compare safety numbers: securecomm "
                    f"contacts verify {user}), then type: /trust {user} {new}")
        if not hmac.compare_digest(fingerprint.encode(), new.encode()):
            return f"nothing trusted: that is not {user}'s new user key ({new})"
        self.devices.pins.trust(user)
        self.devices.forget(user)
        await self.replay_held_mail()  # their direct messages held back for the change: shown now
        if not await self.recheck_held():
            return f"now trusting {user} {new}"
        return f"now trusting {user} {new}; CHANGED cleared"

    def _junk_room_key(self, user: str, why: str) -> None:
        self._warn_counted("bad room keys", f"ignored a room key from {user}: {why}")

    async def _on_room_message(self, ev: P.RoomMessage) -> None:
        state = self.rooms.get(ev.room)
        if state is not None and ev.sender in state.held:
            await self.recheck_held()  # trusted meanwhile elsewhere? then their held key opens this message
            if ev.sender in state.held:
                self._warn_counted("room messages held back", f"a message in #{ev.room} from {ev.sender} was held "
                                   f"back, not shown: {self._changed_advice(ev.sender)}")
                return
        try:
            device = roomcrypto.parse_header(ev.payload).sender
        except SecurecommError as e:
            self._warn_counted("rejected room messages",
                               f"REJECTED a message in #{ev.room} claiming to be from {ev.sender}: {e.message}")
            return
        key = state.sender_key(ev.sender, device) if state else None
        sender = state.members.get(ev.sender, {}).get(device) if state else None
        if state is not None and sender is not None and key is None:
            # We accepted them; they have not accepted us. Most often: our key changed for them.
            self._warn_counted("room messages without their key", f"a message in #{ev.room} from {ev.sender} "
                               f"could not be read, not shown: {ev.sender} has not sent you their room key (if "
                               f"your key changed, {ev.sender} must verify it and run: securecomm contacts trust "
                               f"{self.user})")
            return
        if state is None or key is None or sender is None:
            self._warn_counted("room messages without their key",
                               f"a message in #{ev.room} from {ev.sender} arrived before their key; not shown")
            return
        try:
            plain = roomcrypto.decrypt(ev.room, ev.payload, sender, key)
        except SecurecommError as e:
            self._warn_counted("rejected room messages",
                               f"REJECTED a message in #{ev.room} claiming to be from {ev.sender}: {e.message}")
            return
        self.emit(RoomText(ev.room, ev.sender, plain.body, plain.msg_id, plain.timestamp_ms))

    async def seal_room(self, room: str, body: bytes) -> tuple[bytes, bytes]:
        """Encrypt once for the whole room; returns (msg_id, payload)."""
        await self.recheck_held()  # a member trusted elsewhere gets our key before this line
        state = self.rooms[room]
        async with state.lock:  # a settle in progress finishes handing out its key first
            if state.rotate or state.unkeyed:  # keys first: after a leave, never the key the leaver had
                await self._settle_locked(state)
            payload = roomcrypto.encrypt(room, body, self.me, state.my_key)
        return roomcrypto.parse_header(payload).msg_id, payload

    async def send_room(self, room: str, body: bytes) -> P.Receipt:
        msg_id, payload = await self.seal_room(room, body)
        return await self.client.send_for_receipt(P.RoomSend(room, payload), msg_id, sha256(payload))

