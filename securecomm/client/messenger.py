"""End-to-end messaging on top of a logged-in Client: contacts, direct messages, rooms.

Everything that decides whether to believe a message happens here, on the
client: identities come from the server's key directory but are pinned on
first use (contacts.json) and a changed key is refused; every direct message
is opened with envelope.open_envelope (recipient, signature, decryption,
digest); every room message with the sender's key and identity. A message
that fails is never shown as if it were good: it becomes a Warning event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securecomm.client import answers
from securecomm.client.connection import Client, check_receipt
from securecomm.client.directory import ChangedKeyError, Contacts, check_user_name
from securecomm.crypto import envelope
from securecomm.crypto import room as roomcrypto
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import IntegrityError, SecurecommError
from securecomm.files import PRIVATE_MODE, write_files
from securecomm.wire import protocol as P

#: Message ids remembered to drop redeliveries (a crash between showing and acknowledging).
SEEN_LIMIT = 10_000
#: Bad room keys are counted; a warning is shown for the first and then at every power of ten,
#: so a flood of junk frames cannot flood the screen (30 junk frames -> 2 lines, not 30).
JUNK_WARN_BASE = 10
#: How long a room key may wait for the join that lists its sender (the join's RESULT and the
#: key race on the client); as long as any reply may take.
JOIN_WAIT = 30.0
#: `inbox` without --follow ends this long after it started at the latest, even if a server
#: keeps sending events (or never answers): as long as any one reply may take.
DRAIN_LIMIT = 30.0
#: A burst of joins and leaves in a room is settled once it has been quiet this long: one key
#: rotation and one line per user instead of one per event (see Messenger._settle). Short, so a
#: real leave still rotates at once to a person; a message we send settles first anyway.
SETTLE_QUIET = 0.3
#: Never later than this after the first unsettled change, so non-stop churn still settles.
SETTLE_MAX = 2.0
#: An unknown room event's kind is named in its warning cut to this many characters (it is the server's word).
MAX_SHOWN_KIND = 32


# -- what the UI is told ------------------------------------------------------------------
@dataclass(frozen=True)
class DirectMessage:
    sender: str
    body: bytes
    msg_id: bytes
    sent_at_ms: int
    fingerprint: str


@dataclass(frozen=True)
class RoomText:
    room: str
    sender: str
    body: bytes
    msg_id: bytes
    sent_at_ms: int


@dataclass(frozen=True)
class DeliveryReceipt:
    to: str
    msg_id: bytes
    verified: bool


@dataclass(frozen=True)
class Membership:
    room: str
    user: str
    event: str
    #: Further joins and leaves of this user collapsed into this line (`event` is the latest).
    more: int = 0


@dataclass(frozen=True)
class Warning:
    text: str
    #: False when no message was lost or refused (the server's noise, an unknown room event):
    #: `inbox` counts only the others as messages that failed verification.
    failed: bool = True


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not a failure (say, a changed key now trusted)."""

    text: str

    def __str__(self) -> str:
        return self.text


class SeenIds:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, None] = {}
        if path.exists():
            self.ids = dict.fromkeys(path.read_text().split())

    def __contains__(self, key: str) -> bool:
        return key in self.ids

    def add(self, key: str) -> None:
        """Append one id (a line, fsynced); rewrite the file only when it has doubled."""
        self.ids[key] = None
        if len(self.ids) > 2 * SEEN_LIMIT:
            self.ids = dict.fromkeys(list(self.ids)[-SEEN_LIMIT:])
            write_files([(self.path, ("\n".join(self.ids) + "\n").encode(), PRIVATE_MODE)], force=True)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_MODE)
        with os.fdopen(fd, "a") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclass
class RoomState:
    """One joined room. `members` holds only users the server listed for the room (join result
    or ROOM_EVENT): sender keys are accepted only from them and ours is handed only to them."""

    name: str
    my_key: roomcrypto.SenderKey = field(default_factory=roomcrypto.SenderKey.generate)
    keys: dict[str, roomcrypto.SenderKey] = field(default_factory=dict)
    members: dict[str, PublicIdentity] = field(default_factory=dict)
    #: Set once the join's member list is in; room traffic waits for it (it can overtake the RESULT).
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # -- membership changes not settled yet (see Messenger._settle) --
    #: Someone left since our key was handed out: the next key must be one they never had.
    rotate: bool = False
    #: Members who joined and have not been handed our current key yet.
    unkeyed: set[str] = field(default_factory=set)
    #: user -> [joins and leaves since the line shown for them, the latest of those events]
    churn: dict[str, list[Any]] = field(default_factory=dict)
    settle: asyncio.TimerHandle | None = None
    settle_since: float | None = None  # loop time of the first unsettled change
    rotations: int = 0  # times our key was replaced (a count for tests and benchmarks)
    #: Listed members whose key CHANGED from the one pinned (user -> the key the server listed):
    #: no key to or from them until the user trusts it (`contacts trust`, or /trust in chat).
    held: dict[str, PublicIdentity] = field(default_factory=dict)


class Messenger:
    def __init__(self, client: Client, me: PrivateIdentity, user: str, paths: Any,
                 emit: Callable[[Any], None], *, deliveries: bool = True) -> None:
        self.client, self.me, self.user, self.paths = client, me, user, paths
        self.emit = emit
        #: False for a session that shows nothing (one-shot `send`): the server offers it your waiting
        #: mail too, and acknowledging unshown mail would delete it. Left unacknowledged, it stays queued.
        self.deliveries = deliveries
        self.contacts = Contacts.load(paths.contacts)
        self.seen = SeenIds(paths.config_dir / "seen_ids")
        self.rooms: dict[str, RoomState] = {}
        self.sent_digests: dict[bytes, tuple[str, bytes]] = {}  # msg_id -> (to, body digest)
        self.delivered: dict[bytes, asyncio.Future[DeliveryReceipt]] = {}
        self._directory: dict[str, PublicIdentity] = {}
        self.busy = False
        self.last_activity = time.monotonic()
        self.settle_quiet, self.settle_max = SETTLE_QUIET, SETTLE_MAX
        #: How many times each kind of repeatable warning happened (see _warn_counted).
        self.warned: dict[str, int] = {}
        #: The latest sender key each held member (see RoomState.held) sent us, opened once trusted.
        self.held_keys: dict[str, P.RoomKey] = {}
        client.notice = lambda text: self._warn_counted("unsolicited server errors", text, failed=False)

    # -- identities -----------------------------------------------------------------------
    async def identity_of(self, user: str) -> PublicIdentity:
        """The user's key from the directory, pinned on first use; a change raises."""
        user = user.lower()
        if user == self.user:
            return self.me.public  # notes to self: our own key, never the directory's word for it
        if user in self._directory:
            return self._directory[user]
        what = "the lookup result"
        data = answers.obj(await self.client.request("lookup", user=user), what)
        name, line = answers.text(data, "user", what), answers.text(data, "identity", what)
        check_user_name(name)
        if name != user:  # the key must be pinned under the name it is used for
            raise answers.malformed(f"asked for {user!a}, the lookup answered for {name!a}")
        identity = PublicIdentity.from_line(line)
        self.contacts.check(name, identity)
        self._directory[user] = identity
        return identity

    # -- direct messages ----------------------------------------------------------------------
    async def seal_direct(self, to: str, body: bytes) -> bytes:
        """Seal `body` to `to`'s pinned key and remember its digest for the delivery receipt."""
        sealed = envelope.seal(body, self.me, await self.identity_of(to))
        msg_id = envelope.parse(sealed).header.msg_id
        self.sent_digests[msg_id] = (to.lower(), sha256(body))
        self.delivered[msg_id] = asyncio.get_running_loop().create_future()
        return sealed

    async def send_sealed_direct(self, to: str, sealed: bytes) -> tuple[P.Receipt, bytes]:
        """Send (or resend, byte for byte) a sealed direct message; wait for the server's receipt."""
        msg_id = envelope.parse(sealed).header.msg_id
        fut = self.client.expect_receipt(msg_id)
        try:
            self.client.send_event(P.Direct(to.lower(), sealed))
        except BaseException:
            fut.cancel()  # refused unsent (too large): no one will wait for its receipt
            raise
        receipt = await self.client._wait(fut)
        check_receipt(receipt, sha256(sealed))
        return receipt, msg_id

    async def send_direct(self, to: str, body: bytes) -> tuple[P.Receipt, bytes]:
        return await self.send_sealed_direct(to, await self.seal_direct(to, body))

    async def wait_delivered(self, msg_id: bytes, timeout: float) -> DeliveryReceipt:
        try:
            return await asyncio.wait_for(asyncio.shield(self.delivered[msg_id]), timeout)
        finally:
            self.delivered.pop(msg_id, None)

    async def _on_deliver(self, ev: P.Deliver) -> None:
        try:
            sender = await self.identity_of(ev.sender)
        except ChangedKeyError as e:
            # Not acknowledged: it stays on the server until the user trusts the new key.
            self.emit(Warning(f"message from {ev.sender} held back: {e.message}. {e.hint}"))
            return
        except SecurecommError as e:
            self.emit(Warning(f"message from {ev.sender} could not be checked ({e.message}); it was discarded"))
            self.client.send_event(P.Ack(ev.seq, P.ACK_REJECTED))
            return
        try:
            opened = envelope.open_envelope(ev.envelope, self.me, sender)
        except SecurecommError as e:
            self.emit(Warning(f"REJECTED a message claiming to be from {ev.sender}: {e.message}; it was "
                              "discarded, not shown"))
            self.client.send_event(P.Ack(ev.seq, P.ACK_REJECTED))
            return
        key = f"{ev.sender}:{opened.header.msg_id.hex()}"
        if key not in self.seen:
            self.emit(DirectMessage(ev.sender, opened.body, opened.header.msg_id, opened.header.timestamp_ms,
                                    sender.fingerprint_text))
            self.seen.add(key)
        proof = self.me.sign(P.delivered_transcript(opened.header.msg_id, opened.digest))
        self.client.send_event(P.Ack(ev.seq, P.ACK_OK, opened.digest, proof))

    def _on_delivered(self, ev: P.Delivered) -> None:
        sent = self.sent_digests.pop(ev.msg_id, None)
        if sent is None:
            # Sent by another session of ours (an earlier `send`, or this one's own ACK of a note to
            # self): there is no digest here to check it against, and nothing waits for it.
            return
        verified = False
        if sent[0] == ev.by and same(sent[1], ev.digest):
            signer = self._pinned(ev.by)
            if signer is not None:
                with contextlib.suppress(IntegrityError):
                    signer.verify(ev.signature, P.delivered_transcript(ev.msg_id, ev.digest))
                    verified = True
        receipt = DeliveryReceipt(ev.by, ev.msg_id, verified)
        fut = self.delivered.get(ev.msg_id)  # kept until wait_delivered collects it
        if fut is not None and not fut.done():
            fut.set_result(receipt)
        if not verified:
            self.emit(Warning(f"a delivery receipt from {ev.by} did not verify"))
        else:
            self.emit(receipt)

    def _pinned(self, user: str) -> PublicIdentity | None:
        """The key a delivery receipt from `user` must verify with: ours for a note to self."""
        if user == self.user:
            return self.me.public
        contact = self.contacts.get(user)
        return contact.identity if contact is not None else None

    # -- rooms --------------------------------------------------------------------------------
    async def join(self, room: str) -> list[str]:
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
        for user, line in self._members(data, f"#{name}"):
            if user == self.user:
                names.append(user)
            elif await self._add_member(state, user, line):
                names.append(user)
                self._send_key(state, user)
        state.ready.set()
        return names

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
                self.emit(Warning(f"skipped a member of {where}: {e.message}"))
        return good

    async def _add_member(self, state: RoomState, user: str, line: str) -> bool:
        try:
            identity = PublicIdentity.from_line_cached(line)
            self.contacts.check(user, identity)
        except ChangedKeyError as e:  # counted too: a member with a changed key may join and leave in a loop
            state.held[user] = identity
            self._warn_counted("members with a changed key", f"{user} in #{state.name}: {e.message}. {e.hint}")
            return False
        except SecurecommError as e:  # a malformed identity line or name: that member is skipped
            self._warn_counted("members skipped", f"skipped {user} in #{state.name}: {e.message}")
            return False
        state.members[user] = identity
        state.held.pop(user, None)  # back with the pinned key, or trusted since
        return True

    def _send_key(self, state: RoomState, user: str) -> None:
        sealed = envelope.seal(state.my_key.encode(state.name), self.me, state.members[user])
        self.client.send_event(P.RoomKey(user, sealed))

    async def _joined_rooms(self) -> None:
        """Wait for joins in progress, so that their member lists are known."""
        for state in list(self.rooms.values()):
            if not state.ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.ready.wait(), JOIN_WAIT)

    async def _on_room_event(self, ev: P.RoomEvent) -> None:
        await self._joined_rooms()
        self.recheck_held()  # a `contacts trust` done meanwhile in another shell
        if ev.event not in ("joined", "left"):
            self._warn_counted("unknown room events", f"ignored a room event of a kind this version does not "
                               f"know: {printable(ev.event[:MAX_SHOWN_KIND].encode())}", failed=False)
            return
        state = self.rooms.get(ev.room)
        if state is None or ev.user == self.user:
            return
        try:
            check_user_name(ev.user)  # a name no account can have is no member, and no line to show
        except SecurecommError as e:
            self._warn_counted("room events about malformed names", f"ignored a join/leave in #{ev.room}: {e.message}")
            return
        if ev.event == "joined" and ev.identity:
            if not await self._add_member(state, ev.user, ev.identity):
                return  # skipped, and the warning says why: no key for them, and no line saying they are in
            state.unkeyed.add(ev.user)
        elif ev.event == "left" and state.held.pop(ev.user, None) is not None:
            if not any(ev.user in s.held for s in self.rooms.values()):
                self.held_keys.pop(ev.user, None)
        elif ev.event == "left" and state.members.pop(ev.user, None) is not None:
            state.keys.pop(ev.user, None)
            state.unkeyed.discard(ev.user)
            state.rotate = True  # whoever left must not read what is said from now on: see seal_room
        self._membership_line(state, ev.user, ev.event)
        self._settle_later(state)

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

    def _settle_later(self, state: RoomState) -> None:
        if self.settle_quiet <= 0:  # no coalescing (each change settled at once): the benchmark's baseline
            self._settle(state)
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
        with contextlib.suppress(SecurecommError):  # a write to a connection failing now: the pump reports it
            self._settle(state)

    def _settle(self, state: RoomState) -> None:
        """Hand out our key after a burst of joins and leaves (a new one if anyone left)."""
        if state.settle is not None:
            state.settle.cancel()
        state.settle, state.settle_since = None, None
        if state.rotate:
            state.my_key, state.rotate, state.rotations = roomcrypto.SenderKey.generate(), False, state.rotations + 1
            state.unkeyed = set(state.members)
        for user in sorted(state.unkeyed & set(state.members)):
            self._send_key(state, user)
        state.unkeyed.clear()
        for user, (more, event) in state.churn.items():
            if more:  # one further change is shown as itself (a quick rejoin), more as a count
                self.emit(Membership(state.name, user, event, more if more > 1 else 0))
        state.churn.clear()

    async def _on_room_key(self, ev: P.RoomKey) -> None:
        """Accept a sender key only from a member the server lists for the key's room.

        A key from anyone else is ignored: it never makes its sender a member, so we never
        hand them our own key (they would read the room while `who` does not list them)."""
        await self._joined_rooms()
        if self._is_held(ev.user):
            self.recheck_held()  # trusted meanwhile elsewhere? then this key is accepted below
        sender = next((s.members[ev.user] for s in self.rooms.values() if ev.user in s.members), None)
        if sender is None and self._is_held(ev.user):
            self.held_keys[ev.user] = ev  # the latest only: opened if the user trusts the new key
            self._warn_counted("room keys held back", f"held back a room key from {ev.user}: "
                               f"{self._changed_advice(ev.user)}")
            return
        if sender is None:
            self._junk_room_key(ev.user, "they are not a member of a room you are in")
            return
        self._accept_room_key(ev, sender)

    def _accept_room_key(self, ev: P.RoomKey, sender: PublicIdentity) -> None:
        try:
            opened = envelope.open_envelope(ev.envelope, self.me, sender)
            room, key = roomcrypto.SenderKey.decode(opened.body)
        except SecurecommError as e:
            self._junk_room_key(ev.user, e.message)
            return
        state = self.rooms.get(room)
        listed = state.members.get(ev.user) if state is not None else None
        if state is None or listed is None or not same(listed.fingerprint, sender.fingerprint):
            self._junk_room_key(ev.user, "they are not a member of that room")
            return
        state.keys[ev.user] = key

    # -- members whose key changed ---------------------------------------------------------------
    def _is_held(self, user: str) -> bool:
        return any(user in s.held for s in self.rooms.values())

    def _changed_advice(self, user: str) -> str:
        return (f"{user}'s key CHANGED; verify the new fingerprint with {user} out of band, then run: "
                f"securecomm contacts trust {user} (or /trust {user} in chat)")

    def recheck_held(self) -> list[str]:
        """Members held back for a changed key that the user has trusted since (contacts.json is
        reloaded when another process saved it): they become members, get our sender key, and the
        key they sent while held is opened. Returns their names."""
        if not self._is_held_any():
            return []
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
                state.members[user] = identity
                self._send_key(state, user)
                promoted.append(user)
                self.emit(Notice(f"now trusting {user}'s new key {identity.fingerprint_text}; "
                                 f"sent them your key for #{state.name}"))
        for user in promoted:
            stashed = self.held_keys.pop(user, None)
            sender = next((s.members[user] for s in self.rooms.values() if user in s.members), None)
            if stashed is not None and sender is not None:
                self._accept_room_key(stashed, sender)
        return promoted

    def _is_held_any(self) -> bool:
        return any(s.held for s in self.rooms.values())

    def trust(self, user: str, fingerprint: str | None) -> str:
        """/trust in chat: without a fingerprint, show the changed key; with the one shown (copied
        after checking it with them), trust it as `contacts trust` does and key them in."""
        import hmac

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
        if not self.recheck_held():
            return f"now trusting {user} {new}"
        return f"now trusting {user} {new}; CHANGED cleared"

    def _junk_room_key(self, user: str, why: str) -> None:
        self._warn_counted("bad room keys", f"ignored a room key from {user}: {why}")

    def _warn_counted(self, kind: str, text: str, *, failed: bool = True) -> None:
        """A warning a peer or the server can make us repeat at will: counted per kind, shown in
        full the first time and then only as a count at 10, 100, 1000... (JUNK_WARN_BASE), so a
        flood of bad frames cannot flood the screen (30 junk frames -> 2 lines, not 30)."""
        self.warned[kind] = n = self.warned.get(kind, 0) + 1
        if n == 1:
            self.emit(Warning(text, failed))
            return
        while n % JUNK_WARN_BASE == 0:
            n //= JUNK_WARN_BASE
        if n == 1:
            self.emit(Warning(f"{self.warned[kind]} {kind} so far (the latest: {text}); counting the rest quietly",
                              failed))

    def _on_room_message(self, ev: P.RoomMessage) -> None:
        state = self.rooms.get(ev.room)
        if state is not None and ev.sender in state.held:
            self.recheck_held()  # trusted meanwhile elsewhere? then their held key opens this message
            if ev.sender in state.held:
                self._warn_counted("room messages held back", f"a message in #{ev.room} from {ev.sender} was held "
                                   f"back, not shown: {self._changed_advice(ev.sender)}")
                return
        key = state.keys.get(ev.sender) if state else None
        sender = state.members.get(ev.sender) if state else None
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

    def seal_room(self, room: str, body: bytes) -> tuple[bytes, bytes]:
        """Encrypt once for the whole room; returns (msg_id, payload)."""
        self.recheck_held()  # a member trusted elsewhere gets our key before this line
        state = self.rooms[room]
        if state.rotate or state.unkeyed:  # keys first: after a leave, never the key the leaver had
            self._settle(state)
        payload = roomcrypto.encrypt(room, body, self.me, state.my_key)
        return roomcrypto.parse_header(payload).msg_id, payload

    async def send_room(self, room: str, body: bytes) -> P.Receipt:
        msg_id, payload = self.seal_room(room, body)
        fut = self.client.expect_receipt(msg_id)
        self.client.send_event(P.RoomSend(room, payload))
        receipt = await self.client._wait(fut)
        check_receipt(receipt, sha256(payload))
        return receipt

    # -- the event pump -------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume unsolicited events until the connection fails (then re-raise its error)."""
        while True:
            ev = await self.client.events.get()
            if isinstance(ev, SecurecommError):
                raise ev
            self.busy = True
            try:
                await self._handle(ev)
            except SecurecommError as e:
                if self.client.closed:
                    raise
                self.emit(Warning(str(e)))
            finally:
                self.busy = False
                self.last_activity = time.monotonic()

    async def drain(self, quiet_s: float, limit_s: float = DRAIN_LIMIT,
                    pump: asyncio.Task[None] | None = None) -> None:
        """Return once every delivery so far is handled and none came for `quiet_s`, at most
        `limit_s` after the start, or as soon as the event pump has ended (its error is the answer)."""
        deadline = time.monotonic() + limit_s
        # a round trip: the first deliveries are queued now (the pump's end interrupts it too)
        await self._unless_ended(self.client.request("who", room="lobby"), pump, deadline)
        while time.monotonic() < deadline and not (pump is not None and pump.done()):
            idle = self.client.events.empty() and not self.busy
            if idle and time.monotonic() - self.last_activity >= quiet_s:
                return
            await asyncio.sleep(0.02)

    @staticmethod
    async def _unless_ended(work: Any, pump: asyncio.Task[None] | None, deadline: float) -> None:
        task = asyncio.ensure_future(work)
        waits: set[asyncio.Future[Any]] = {task} | ({pump} if pump is not None else set())
        await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SecurecommError):
                await task
        elif pump is None or not pump.done():
            task.result()  # the request's own error, when the pump still runs
        elif not task.cancelled():
            task.exception()  # the same error as the pump's, reported from there: retrieved, not "never retrieved"

    async def _handle(self, ev: P.Event) -> None:
        if isinstance(ev, P.Deliver):
            if self.deliveries:
                await self._on_deliver(ev)
        elif isinstance(ev, P.Delivered):
            self._on_delivered(ev)
        elif isinstance(ev, P.RoomEvent):
            await self._on_room_event(ev)
        elif isinstance(ev, P.RoomKey):
            await self._on_room_key(ev)
        elif isinstance(ev, P.RoomMessage):
            self._on_room_message(ev)


def now_text(ms: int | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime((ms or time.time() * 1000) / 1000))


def printable(body: bytes) -> str:
    """Message text safe for a terminal: control characters (escape sequences!) are shown, not obeyed."""
    text = body.decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)


#: Starts every continuation line of a multi-line message: a body cannot make a line of its own
#: that looks like the start of another message (no time stamp, no sender in the first column).
CONTINUATION = "    \u2502 "


#: At most this many rows of one message on a terminal (a 400,000-newline message would scroll
#: everything else away); the rest is counted in one line pointing to --json.
MAX_SHOWN_ROWS = 200


def printable_body(body: bytes, width: int | None = None, first: int = 0) -> str:
    """A message body for a terminal: one shown line per line of text, each escaped as in
    `printable`, continuation lines indented behind CONTINUATION. One trailing newline (as
    `printf ...\\n | send -` leaves) is dropped; any other control character stays escaped.

    With `width` (a terminal's columns; `first` = columns already used on the first row by the
    time stamp and sender), long lines are wrapped here, each further row behind CONTINUATION too:
    left to the terminal, padding could push forged text to column 0 of a row of its own. At
    most MAX_SHOWN_ROWS rows are shown."""
    text = body.decode("utf-8", "replace")
    text = text[:-1] if text.endswith("\n") else text
    lines = (printable(line.encode()) for line in text.split("\n"))
    if width is None:
        return ("\n" + CONTINUATION).join(lines)
    rows = _wrapped(lines, width, first)
    shown = list(itertools.islice(rows, MAX_SHOWN_ROWS))
    rest = sum(1 for _ in rows)
    if rest:
        shown.append(f"\u2026 {rest} more lines (use --json)")
    return ("\n" + CONTINUATION).join(shown)


def cell_width(text: str) -> int:
    """Columns `text` may take on a terminal: ASCII 1, anything else 2. Overcounting only wraps
    a row early; undercounting would let the terminal wrap it, which is what we must prevent."""
    return sum(1 if ord(c) < 128 else 2 for c in text)


def _wrapped(lines: Iterator[str], width: int, first: int) -> Iterator[str]:
    """Rows of at most the columns left: the first after `first`, the others after CONTINUATION.
    One column is kept free (some terminals wrap on the last column itself)."""
    room = max(1, width - 1 - first)
    for line in lines:
        row: list[str] = []
        used = 0
        for c in line:
            w = cell_width(c)
            if used + w > room and row:
                yield "".join(row)
                row, used, room = [], 0, max(1, width - 1 - cell_width(CONTINUATION))
            row.append(c)
            used += w
        yield "".join(row)
        room = max(1, width - 1 - cell_width(CONTINUATION))
