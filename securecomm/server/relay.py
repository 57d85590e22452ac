"""Store-and-forward of direct messages, room fan-out and the key directory.

The server never sees a direct or room message in clear: direct messages are
envelopes sealed to the recipient (the server checks the sender's signature
and the addressing, stores the bytes durably and forwards them), and room
messages are encrypted with the sender's key, which the server never holds.

Delivery: on login, and whenever a session has acknowledged everything it
was sent, the session is offered the oldest pending mailbox rows; a message
committed while the user is online wakes its sessions through the bus
(net/bus.py), which then read it from the store: the store is the truth. A row is deleted when
the recipient ACKs it; an OK ACK carries the recipient's signature over
(msg_id, body digest), which is relayed to the sender as a delivery receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from typing import TYPE_CHECKING, Any

from securecomm.crypto import envelope
from securecomm.crypto import prekeys as K
from securecomm.crypto import room as roomcrypto
from securecomm.crypto.identity import PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import IntegrityError, OversizedError, SecurecommError, UsageError
from securecomm.net.bus import Bus
from securecomm.server import intake, versions
from securecomm.server.commit_queue import not_stored
from securecomm.server.deviceops import DEVICE_REMOVED_TEXT
from securecomm.server.devicerelay import DeviceRelay, checked_as_version_2, is_version_2
from securecomm.store.db import MailItem, NewDirect, StoredMessage, normalise_name
from securecomm.timeutil import now_ms
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.server.commit_queue import AsyncStore
    from securecomm.server.config import ServerConfig
    from securecomm.server.session import Session
    from securecomm.store.retention import Expired

log = logging.getLogger("securecomm.server")

#: Mailbox rows offered to a session at a time; more follow as it acknowledges.
MAIL_BATCH = 256
#: Largest `seq` there can be (SQLite integers are signed 64-bit); an ACK naming
#: a larger one names nothing pending and is ignored like any other (PROTOCOL.md 5.5).
MAX_SEQ = 2**63 - 1
#: Envelopes up to this size ride in the wake-up (NATS's default max_payload is 1 MiB); larger ones
#: are read from the store by the woken relay.
CARRY_MAX = 64 * 1024
_CARRIED = struct.Struct(">QQQB")  # seq, prev seq, stored_at_ms, sender name length


#: What another relay sends an account's sessions over the bus: a delivery receipt, a room key, a NOTICE
#: (publish_user above). Anything else is dropped: a process that reached an unauthenticated NATS had a
#: fatal ERROR shown to a user's session as the server's (the attacker's check, stop 26).
BUS_USER_TYPES = frozenset({P.MsgType.DELIVERED, P.MsgType.ROOM_KEY, P.MsgType.NOTICE})


def _notice(data: bytes) -> P.Notice | None:
    """The NOTICE an encoded frame carries (4-byte length, type, body), or None for any other frame."""
    if len(data) < 5 or data[4] != P.MsgType.NOTICE:
        return None
    try:
        event = P.decode_payload(data[4:])
    except P.ProtocolError:
        return None
    return event if isinstance(event, P.Notice) else None


def _room_key_device(data: bytes) -> bytes | None:
    """The recipient device of an encoded version-2 ROOM_KEY frame, or None for any other frame."""
    if len(data) < 5 or data[4] != P.MsgType.ROOM_KEY:
        return None
    try:
        event = P.decode_payload(data[4:])
        if not isinstance(event, P.RoomKey) or not is_version_2(event.envelope):
            return None
        return K.parse_v2(event.envelope).header.recipient
    except SecurecommError:  # ProtocolError included; checked before it was published, so not expected
        return None


def _arg(ev: P.Request, name: str) -> str:
    """A string argument; missing or not a string counts as "" (which names nobody, PROTOCOL.md 5.4)."""
    value = ev.args.get(name)
    return value if isinstance(value, str) else ""


def _room_arg(ev: P.Request) -> str:
    """The request's room name (rooms follow the user-name rule); a bad one is called a room name."""
    raw = _arg(ev, "room")
    try:
        return normalise_name(raw)
    except UsageError:
        raise UsageError(f"room name {raw[:40]!r} must be 1-32 characters of a-z 0-9 _ . -") from None


def ttl_text(seconds: float) -> str:
    """--mailbox-ttl as people say it: `30 days`, `12 hours`, `90 seconds`."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit[:-1] if seconds == size else unit}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


class Relay:
    def __init__(self, config: ServerConfig, store: AsyncStore, bus: Bus) -> None:
        self.config, self.store, self.bus = config, store, bus
        bus.on_mail(self._wake)
        bus.on_room(self._room_event)
        bus.on_user(self._user_frame)
        bus.on_presence(self._presence)
        self.online: dict[int, set[Session]] = {}
        self.rooms: dict[str, dict[Session, None]] = {}
        #: Devices and prekeys (protocol version 2); set by the listener, None in unit tests.
        self.devices: DeviceRelay | None = None
        #: Members connected to OTHER relays (user -> identity line), per room with a member here; learnt
        #: from the bus (net/nats_bus.py): empty with one relay. A relay that dies unannounced leaves its
        #: members listed here until they rejoin or leave elsewhere.
        self.remote: dict[str, dict[str, str]] = {}
        #: Frames for users' sessions that came over the bus and were not of BUS_USER_TYPES.
        self.bus_refused = 0

    # -- presence --------------------------------------------------------------------
    def logged_in(self, s: Session) -> None:
        assert s.user is not None
        self.online.setdefault(s.user.id, set()).add(s)
        self.bus.watch_user(s.user.id)
        self.offer_pending(s)

    def gone(self, s: Session) -> None:
        if s.user is not None:
            sessions = self.online.get(s.user.id)
            if sessions is not None and s in sessions:
                sessions.discard(s)
                self.bus.unwatch_user(s.user.id)
                if not sessions:
                    del self.online[s.user.id]
        for room in list(s.rooms):
            self._leave(s, room)

    # -- direct messages ---------------------------------------------------------------
    async def direct(self, s: Session, ev: P.Direct) -> None:
        assert s.user is not None
        msg_id = envelope.peek_msg_id(ev.envelope)  # named even when the envelope does not parse
        if self.devices is not None and checked_as_version_2(ev.envelope, s.version):
            await self._direct_v2(s, ev, msg_id)
            return
        if self._version_1_refused(s, ev, msg_id):
            return
        parsed = intake.parse(ev.envelope)
        to = None if isinstance(parsed, intake.Refusal) else self.store.read().get_user(ev.to)
        checked = parsed if isinstance(parsed, intake.Refusal) else self._direct_checked(s, parsed, to, ev.to)
        if isinstance(checked, intake.Refusal):
            rejected = checked.code is P.ErrorCode.INTEGRITY
            log.info("%s direct message %s: %s", s.label(), "rejected" if rejected else "refused",
                     checked.detail or checked.message)
            s.error(checked.code, checked.message, msg_id=msg_id)
            return
        assert to is not None
        await s.in_flight.acquire()
        h = checked.envelope.header
        fut = self.store.submit(NewDirect(s.user.id, to.id, h.msg_id, checked.digest, ev.envelope))
        s.track(fut, lambda f: self._stored(s, f, h.msg_id, to.id, ev.envelope))

    @staticmethod
    def _version_1_refused(s: Session, ev: P.Direct | P.RoomKey, msg_id: bytes | None) -> bool:
        """A version-2 session sends only version-2 envelopes (docs/PROTOCOL.md 6.6): INTEGRITY naming
        the version, nothing stored or relayed, the connection kept; True if refused."""
        if s.version < 2:
            return False
        log.info("%s %s refused: a version-1 envelope in a version-2 session", s.label(), ev.TYPE.name)
        s.error(P.ErrorCode.INTEGRITY, versions.VERSION_1_ENVELOPE, msg_id=msg_id)
        return True

    async def _direct_v2(self, s: Session, ev: P.Direct, msg_id: bytes | None) -> None:
        """An envelope sealed to a prekey of one device of `ev.to` (docs/PROTOCOL.md 6.6, 6.7)."""
        assert s.user is not None and self.devices is not None
        to = self.store.read().get_user(ev.to)
        checked = self.devices.check(s, ev.envelope, to, ev.to, self.config.stale_window_ms)
        if isinstance(checked, intake.Refusal):
            log.info("%s direct message refused: %s", s.label(), checked.detail or checked.message)
            s.error(checked.code, checked.message, msg_id=msg_id, fatal=checked.code is P.ErrorCode.DEVICE_REMOVED)
            return
        assert to is not None
        await s.in_flight.acquire()
        h = checked.header
        # stored for the one device its header names; a copy for each other device is not a retry (6.7)
        fut = self.store.submit(NewDirect(s.user.id, to.id, h.msg_id, sha256(ev.envelope), ev.envelope,
                                          h.sender, h.recipient))
        # not carried in the wake-up: each device's sessions read their own mail from the store
        s.track(fut, lambda f: self._stored(s, f, h.msg_id, to.id, None))

    def _direct_checked(self, s: Session, env: envelope.Envelope, to: Any,
                        name: str) -> intake.Accepted | intake.Refusal:
        """The recipient account must exist and have a key; then the same checks as any envelope."""
        if to is None:
            return intake.Refusal(P.ErrorCode.NOT_FOUND, f"no user named {name[:40]!r}")
        if to.fingerprint is None:
            return intake.Refusal(P.ErrorCode.NOT_FOUND, f"{to.name} has not registered a key yet")
        rules = intake.Rules(to.fingerprint, self.config.stale_window_ms, to.name)
        return intake.check(env, rules, s.identity, now_ms())

    def _stored(self, s: Session, fut: asyncio.Future[StoredMessage], msg_id: bytes, to_id: int,
                sealed: bytes | None) -> None:
        """`sealed`: the envelope a wake-up may carry (version 1, for every session of the account);
        None for a version-2 copy, which only its device's sessions may be offered (they read it)."""
        if fut.cancelled() or fut.exception() is not None:
            s.error(*not_stored(fut), msg_id=msg_id)
            return
        stored = fut.result()
        if stored.refused is not None:
            self._mailbox_full(s, msg_id, to_id, stored.refused)
            return
        with contextlib.suppress(P.ProtocolError):
            s.send(P.Receipt(stored.msg_id, stored.sha256, stored.stored_at_ms, stored.duplicate))
        if stored.seq is None:
            return
        if sealed is None:
            self.bus.publish_mail(to_id)  # only a wake-up: each device's sessions read their own rows
        else:
            assert s.user is not None
            item = MailItem(stored.seq, s.user.name, stored.stored_at_ms, sealed)
            self.bus.publish_mail(to_id, encode_carried(item, stored.prev_seq))

    def _wake(self, user_id: int, carried: bytes = b"") -> None:
        """A message for `user_id` was committed: its sessions here get it, in order.

        The wake-up may carry the stored message and the seq of the one before it (read under the
        recipient's mailbox lock): a session that has been offered that far is sent it at once. Any
        other case (nothing carried, a gap, a backlog) reads the store, which is always right; a lost
        wake-up is made good by the next one, a login or an acknowledgement."""
        pushed = decode_carried(carried)
        for other in list(self.online.get(user_id, ())):
            if other.mailbox.backlog or other.closing:  # with a backlog the next batch brings it
                continue
            if other.awaiting_pairing:  # a device waiting to be paired is offered no mail
                continue
            if pushed is not None and other.identity is not None and pushed[1] <= other.mailbox.high:
                other.mailbox.offer(pushed[0])  # ignored if already offered (seq <= high)
            else:
                self.offer_pending(other)

    def _mailbox_full(self, s: Session, msg_id: bytes, to_id: int, why: str) -> None:
        to = self.store.read().get_user_by_id(to_id)
        name = to.name if to is not None else "the recipient"
        log.info("%s direct message refused: %s", s.label(), why)  # no recipient: who writes to whom is not logged
        s.error(P.ErrorCode.MAILBOX_FULL, f"{name}'s {why}; nothing was stored, and nothing already stored "
                "was dropped", msg_id=msg_id)

    def offer_pending(self, s: Session) -> None:
        """Send the next batch of stored mail, oldest first.

        Synchronous on purpose (a read-only connection on the loop): no live push
        can slip in between the query and the offers, so order needs no queue."""
        assert s.user is not None
        # a password-only login proved no key, a pending device is not listed: never offered mail (see ack)
        if s.identity is None or s.awaiting_pairing:
            return
        box = s.mailbox
        while True:
            items = self.store.read().pending_mail(s.user.id, box.high, MAIL_BATCH, s.device)
            box.backlog = len(items) == MAIL_BATCH
            for item in items:
                box.offer(item)
            # A batch none of which could be sent (too large to frame) gets no ACK to ask for the next:
            # ask now. Ends: `high` moves past every row offered.
            if not box.backlog or box.outstanding or s.conn.state is not P.State.READY:
                return

    async def ack(self, s: Session, ev: P.Ack) -> None:
        assert s.user is not None
        if ev.seq > MAX_SEQ:
            return
        if s.identity is None:
            # Offered nothing, so it names nothing it was sent: ignored like an unknown seq (PROTOCOL.md 5.5).
            # Before, a password-only login was given the account's key and could delete its mail unread.
            log.warning("%s ACK ignored: no device key proven in this connection", s.label())
            return
        if ev.status == P.ACK_HELD:
            # kept for a later session (4.2); only its place in this session's page is freed, so that mail held
            # back for one sender's changed key cannot stop the rest (the spec-only client's check: 256 held
            # messages, one page, and nobody else's mail came)
            s.mailbox.acked(ev.seq)
            if s.mailbox.backlog and not s.mailbox.outstanding:
                self.offer_pending(s)
            return
        # only a row this session could have been offered: another device's mail stays for it (6.7)
        taken = await self.store.call(self.store.store.take_mail, s.user.id, ev.seq, s.device)
        s.mailbox.acked(ev.seq)
        if taken is not None:
            if ev.status == P.ACK_OK:
                if s.handlers.metrics is not None:
                    s.handlers.metrics.messages_delivered.inc()
                receipt = P.Delivered(taken.msg_id, ev.digest, ev.signature, s.user.name, taken.device)
                # to the sender's sessions on every relay (the bus reaches the ones elsewhere)
                self.bus.publish_user(taken.sender_id, P.encode_event(receipt, self.config.max_frame))
            else:
                log.warning("%s rejected a direct message (failed verification)", s.label())  # no id, no sender
        if s.mailbox.backlog and not s.mailbox.outstanding:
            self.offer_pending(s)

    def expired(self, batch: list[Expired]) -> None:
        """Tell each sender connected here that its message was dropped unread (PROTOCOL.md 4.2)."""
        kept = ttl_text(self.config.mailbox_ttl)
        for e in batch:
            for s in list(self.online.get(e.sender_id, ())):
                s.error(P.ErrorCode.EXPIRED, f"message expired: it waited unread longer than this server keeps "
                        f"mail ({kept}) and was dropped", msg_id=e.msg_id)

    # -- directory and rooms ------------------------------------------------------------
    async def request(self, s: Session, ev: P.Request) -> bool:
        """Handle directory/room requests; False if the op is not ours."""
        if self.devices is not None and self.devices.request(s, ev, self.bus.publish_user):
            return True
        handler = {"lookup": self._lookup, "join": self._join, "leave": self._leave_req,
                   "who": self._who}.get(ev.op)
        if handler is None:
            return False
        try:
            await handler(s, ev)
        except UsageError as e:
            s.error(P.ErrorCode.NOT_FOUND, e.message, rid=ev.rid)
        except OversizedError:  # a RESULT that cannot be framed is refused, never an INTERNAL (issue 5)
            log.error("%s %s answer larger than --max-frame", s.label(), ev.op)
            s.error(P.ErrorCode.TOO_LARGE, f"the answer to {ev.op!r} is larger than this server's frame limit",
                    rid=ev.rid)
        return True

    async def _lookup(self, s: Session, ev: P.Request) -> None:
        name = _arg(ev, "user")
        user = self.store.read().get_user(name)
        if user is None:
            s.error(P.ErrorCode.NOT_FOUND, f"no user named {name[:40]!r}", rid=ev.rid)
            return
        if user.identity is None:  # the account exists: say so, or it reads as a typo in the name
            s.error(P.ErrorCode.NOT_FOUND, f"user {user.name!r} exists but has not logged in with a key yet, so "
                    "nothing can be sealed to them (ask them to run: securecomm user login)", rid=ev.rid)
            return
        s.send(P.Result(ev.rid, {"user": user.name, "identity": PublicIdentity.decode_cached(user.identity).line}))

    def _members(self, room: str) -> list[dict[str, Any]]:
        here = [{"user": m.user.name, "identity": m.identity.line}
                for m in self.rooms.get(room, {}) if m.user is not None and m.identity is not None]
        names = {m["user"] for m in here}
        return here + [{"user": u, "identity": line} for u, line in self.remote.get(room, {}).items()
                       if u not in names]

    # -- membership between relays ------------------------------------------------------
    # A relay's first member of a room asks the others "who is there?"; each answers with its
    # members ("here", reply); a join or a last leave here is told as "here" / "gone". An answer
    # about someone new is shown to this relay's members as a "joined" event (the first member
    # here missed their real one); a plain "here" is not, the room's own "joined" frame told them.
    def _tell(self, room: str, op: str, user: str = "", identity: str = "", reply: bool = False) -> None:
        self.bus.publish_presence(room, json.dumps({"op": op, "user": user, "identity": identity,
                                                    "reply": reply}).encode())

    def _presence(self, room: str, data: bytes) -> None:
        try:
            news = json.loads(data)
            op, user, identity = str(news["op"]), str(news["user"]), str(news["identity"])
        except (ValueError, KeyError, TypeError):
            log.warning("bus: malformed membership news for room %s ignored", room[:40])
            return
        if room not in self.rooms:
            return
        if op == "who":
            for m in list(self.rooms[room]):
                if m.user is not None and m.identity is not None:
                    self._tell(room, "here", m.user.name, m.identity.line, reply=True)
        elif op == "here":
            known = self.remote.setdefault(room, {})
            new = user not in known
            if new and len(known) + len(self.rooms[room]) >= self.config.room_member_limit():
                return  # a room holds no more (an injected flood of "here" kept 3,000 in memory: stop 26)
            known[user] = identity
            if new and news.get("reply"):
                self._room_event(room, P.encode_event(P.RoomEvent(room, "joined", user, identity),
                                                      self.config.max_frame), None)
        elif op == "gone":
            self.remote.get(room, {}).pop(user, None)

    async def _join(self, s: Session, ev: P.Request) -> None:
        room = _room_arg(ev)
        assert s.user is not None
        if s.identity is None:
            s.error(P.ErrorCode.FORBIDDEN, "register a key first (securecomm user login)", rid=ev.rid)
            return
        first_here = room not in self.rooms
        members = self.rooms.setdefault(room, {})
        if s not in members and self._room_full(s, ev, room, members):
            if not members:
                del self.rooms[room]
            return
        if s not in members:
            self._broadcast(room, P.RoomEvent(room, "joined", s.user.name, s.identity.line), exclude=s)
            members[s] = None
            s.rooms.add(room)
            ready = self.bus.watch_room(room)
            if ready is not None:  # answered once every relay's lines to the room reach this one
                await ready
            if first_here:
                self._tell(room, "who")
            self._tell(room, "here", s.user.name, s.identity.line)
        s.send(P.Result(ev.rid, {"room": room, "members": self._members(room)}))

    def _room_full(self, s: Session, ev: P.Request, room: str, members: dict[Session, None]) -> bool:
        """Refuse (non-fatally) a join beyond the room member limit; True if refused."""
        limit = self.config.room_member_limit()
        if len(members) < limit:
            return False
        log.info("%s join %s refused: %d members (the maximum)", s.label(), room, len(members))
        s.error(P.ErrorCode.FORBIDDEN, f"room {room!r} is full ({limit} members, the maximum); "
                "ask the operator about --max-room-members", rid=ev.rid)
        return True

    async def _leave_req(self, s: Session, ev: P.Request) -> None:
        room = _room_arg(ev)
        self._leave(s, room)
        s.send(P.Result(ev.rid, {"room": room, "left": True}))

    async def _who(self, s: Session, ev: P.Request) -> None:
        room = _room_arg(ev)
        s.send(P.Result(ev.rid, {"room": room, "members": self._members(room)}))

    def _leave(self, s: Session, room: str) -> None:
        members = self.rooms.get(room)
        if members is None or s not in members:
            return
        del members[s]
        s.rooms.discard(room)
        self.bus.unwatch_room(room)
        if s.user is not None and not any(m.user is not None and m.user.id == s.user.id for m in members):
            self._tell(room, "gone", s.user.name)
        if not members:
            del self.rooms[room]
            self.remote.pop(room, None)
        if s.user is not None:  # also when no member is left here: members on other relays are told
            # the device that left (version 2: a member may be in the room from several devices, 4.3)
            line = s.identity.line if s.identity is not None else None
            self._broadcast(room, P.RoomEvent(room, "left", s.user.name, line), exclude=s)

    def _broadcast(self, room: str, ev: P.Event, exclude: Session | None = None) -> None:
        # encoded once; the same bytes go to every member, on every relay the bus reaches
        self.bus.publish_room(room, P.encode_event(ev, self.config.max_frame), exclude)

    def _room_event(self, room: str, data: bytes, origin: object) -> None:
        for m in self.rooms.get(room, {}):
            if m is not origin and m.conn.state is P.State.READY:
                m.outbox.put(data)

    def _room_key_v2(self, s: Session, ev: P.RoomKey, target: Any) -> None:
        """A sender key sealed to a prekey of one device of `ev.user` (6.6): checked as a DIRECT is,
        then relayed to that device's sessions only, on every relay (see _user_frame)."""
        assert s.user is not None and self.devices is not None
        msg_id = envelope.peek_msg_id(ev.envelope)
        checked = self.devices.check(s, ev.envelope, target, ev.user, self.config.stale_window_ms)
        if isinstance(checked, intake.Refusal):
            log.info("%s room key refused: %s", s.label(), checked.detail or checked.message)
            s.error(checked.code, checked.message, msg_id=msg_id, fatal=checked.code is P.ErrorCode.DEVICE_REMOVED)
            return
        with contextlib.suppress(OversizedError):  # intake already refused what cannot fit
            self.bus.publish_user(target.id, P.encode_event(P.RoomKey(s.user.name, ev.envelope),
                                                            self.config.max_frame))

    def _user_frame(self, user_id: int, data: bytes) -> None:
        """An encoded event for every session of `user_id` connected here; a NOTICE about one device
        goes to that device's sessions only, one about the account's devices to its sessions but pending
        ones (6.4), and `device_removed` ends the removed device's sessions
        (on every relay: this arrives over the bus, docs/PROTOCOL.md 6.7)."""
        if len(data) < 5 or data[4] not in BUS_USER_TYPES:
            self.bus_refused += 1
            if self.bus_refused & (self.bus_refused - 1) == 0:  # 1, 2, 4, 8...: a flood does not flood the log
                log.warning("bus: a frame of type %d for a user's sessions ignored (not one relays send)",
                            data[4] if len(data) > 4 else -1)
            return
        notice = _notice(data)
        device = _room_key_device(data)
        for m in list(self.online.get(user_id, ())):
            if m.conn.state is not P.State.READY or m.closing:
                continue
            if device is not None and (m.device is None or not same(m.device, device)):
                continue  # a version-2 ROOM_KEY is for the one device it is sealed to
            if m.awaiting_pairing and notice is None:
                continue  # a device waiting to be paired gets only its notices (no receipts, no room keys)
            mine = notice is not None and m.identity is not None and notice.device is not None \
                and same(m.identity.fingerprint, notice.device)
            if notice is not None and (not mine if notice.event in P.NOTICE_FOR_ONE_DEVICE else m.awaiting_pairing):
                continue  # one device's notice; or an account's, which a device waiting to be paired is not told
            if notice is not None and notice.event == "device_removed" and mine and self.devices is not None \
                    and m.identity is not None and self.devices.listed(user_id, m.identity.fingerprint):
                # the store is the truth: a removal is published after its commit, so a device still listed was
                # not removed (the re-check, stop 26: a NOTICE published on NATS ended a listed device's sessions)
                log.warning("bus: a device_removed notice for %s, which is still listed, ignored", m.label())
                continue
            m.outbox.put(data)
            if notice is not None and notice.event == "device_removed" and mine:
                log.info("%s device removed from its list: closing", m.label())
                self.gone(m)
                m.end(P.ErrorCode.DEVICE_REMOVED, DEVICE_REMOVED_TEXT)

    def room_send(self, s: Session, ev: P.RoomSend) -> None:
        assert s.user is not None
        try:
            header = roomcrypto.parse_header(ev.payload)
        except IntegrityError as e:
            log.info("%s room message rejected: %s", s.label(), e.message)
            s.error(P.ErrorCode.INTEGRITY, P.OPAQUE_TEXTS[P.ErrorCode.INTEGRITY],
                    msg_id=roomcrypto.peek_msg_id(ev.payload))
            return
        if ev.room not in s.rooms:
            s.error(P.ErrorCode.FORBIDDEN, f"join {ev.room[:40]!r} before sending to it", msg_id=header.msg_id)
            return
        if s.identity is None or not same(header.sender, s.identity.fingerprint):
            s.error(P.ErrorCode.FORBIDDEN, "room message is not from the logged-in identity", msg_id=header.msg_id)
            return
        # Members verify the signature end to end; the server only routes.
        self._broadcast(ev.room, P.RoomMessage(ev.room, s.user.name, ev.payload), exclude=s)
        s.send(P.Receipt(header.msg_id, sha256(ev.payload), now_ms(), False))

    def room_key(self, s: Session, ev: P.RoomKey) -> None:
        assert s.user is not None
        target = self.store.read().get_user(ev.user)
        if self.devices is not None and checked_as_version_2(ev.envelope, s.version):
            self._room_key_v2(s, ev, target)
            return
        if self._version_1_refused(s, ev, envelope.peek_msg_id(ev.envelope)):
            return
        if target is None:
            log.debug("%s room key for an unknown user dropped", s.label())
            return
        # to the target's sessions on every relay; one that is offline everywhere drops it, as before
        with contextlib.suppress(OversizedError):  # intake already refused what cannot fit
            self.bus.publish_user(target.id, P.encode_event(P.RoomKey(s.user.name, ev.envelope),
                                                            self.config.max_frame))


def encode_carried(item: MailItem, prev_seq: int | None) -> bytes:
    """A wake-up's payload: the stored message and its predecessor's seq; b"" when it cannot ride along
    (the store did not say what came before, or the envelope is large)."""
    sender = item.sender.encode()
    if prev_seq is None or len(item.envelope) > CARRY_MAX or len(sender) > 255:
        return b""
    return _CARRIED.pack(item.seq, prev_seq, item.stored_at_ms, len(sender)) + sender + item.envelope


def decode_carried(data: bytes) -> tuple[MailItem, int] | None:
    """(item, prev seq) from a wake-up's payload; None for b"" or anything malformed (read the store)."""
    if len(data) < _CARRIED.size:
        return None
    seq, prev, stored_at_ms, n = _CARRIED.unpack_from(data)
    sender, sealed = data[_CARRIED.size : _CARRIED.size + n], data[_CARRIED.size + n :]
    if len(sender) != n or not sealed or not 0 <= prev < seq <= MAX_SEQ:
        return None
    try:
        name = sender.decode()
    except UnicodeDecodeError:
        return None
    return MailItem(seq, name, stored_at_ms, sealed), prev
