"""One connection's loop above the wire: reading with deadlines, dispatching events, writing replies.

Theory of operation
-------------------
A Session reads up to READ_CHUNK at a time into its wire.Connection and
dispatches each event to the collaborators it was given: `LoginPort` (logins;
server/auth.py), `Handlers` (SEND, requests, relay budgets; the listener) and `RelayPort`
(DIRECT, ACK, rooms; server/relay.py). It knows nothing of the store, so it
imports no sqlite3 and runs unchanged over another store or a message bus.
Every wait has a deadline: the login, a partly received frame, idleness.
Replies are queued on an Outbox that writes once per event-loop turn, so a
burst of receipts becomes one TLS record instead of hundreds; a client that
does not read is cut off at MAX_OUTBOUND_BUFFER. The Mailbox is the session's
side of direct-message delivery: what it was offered, exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from securecomm.crypto import envelope
from securecomm.crypto.identity import PublicIdentity
from securecomm.errors import OversizedError
from securecomm.server import versions
from securecomm.server.admission import Ticket
from securecomm.server.config import ServerConfig
from securecomm.server.logs import Label
from securecomm.wire import protocol as P
from securecomm.wire.files import FilePut
from securecomm.wire.relayed import relayed_size

if TYPE_CHECKING:
    from securecomm.server.metrics import Metrics
    from securecomm.store.db import User

log = logging.getLogger("securecomm.server")


#: Connection ids for the logs: unique while the server runs, so one connection's lines can be followed.
_CONNECTION_IDS = itertools.count(1)


class Handlers(Protocol):
    """What a session asks of the server it belongs to (the listener implements it)."""

    def handle_send(self, s: Session, ev: P.Send) -> None: ...
    async def handle_request(self, s: Session, ev: P.Request) -> None: ...
    def relay_budget(self, user_id: int) -> TokenBucket: ...
    async def file_put(self, s: Session, ev: FilePut) -> None: ...
    def downloading(self, s: Session) -> bool: ...

    #: Where the session counts what it receives, receipts and refuses (`serve --metrics`); None: off.
    metrics: Metrics | None


class LoginPort(Protocol):
    """What a session hands to the logins (server/auth.py implements it)."""

    async def login_password(self, s: Session, ev: P.LoginPassword) -> None: ...
    async def login_key(self, s: Session, ev: P.LoginKey) -> None: ...


class RelayPort(Protocol):
    """What a session hands to the relay (server/relay.py implements it)."""

    async def direct(self, s: Session, ev: P.Direct) -> None: ...
    async def ack(self, s: Session, ev: P.Ack) -> None: ...
    def room_send(self, s: Session, ev: P.RoomSend) -> None: ...
    def room_key(self, s: Session, ev: P.RoomKey) -> None: ...


READ_CHUNK = 64 * 1024
#: What a pending device (docs/PROTOCOL.md 6.4) may ask, besides PING and BYE.
PENDING_OPS = ("pair_start", "pair_complete")


#: Frame types a device waiting to be paired may send (its REQUESTs are limited to pending_may's ops).
PENDING_TYPES = frozenset({P.MsgType.REQUEST, P.MsgType.PING, P.MsgType.BYE})


def pending_may(ev: P.Request) -> bool:
    """Pairing; or starting over without any other device (`user login --reset-user-key`, 6.4 end):
    a `device_list_publish` with `reset`, which DeviceOps accepts only after the password and the
    device key were proved in this connection."""
    return ev.op in PENDING_OPS or (ev.op == "device_list_publish" and ev.args.get("reset") is True)

#: Bytes the server will hold for one client that does not read (a room can
#: produce faster than a stalled reader drains). Beyond this the client is cut
#: off instead of letting it grow the server's memory without bound. 4 MiB is
#: four maximum frames: a reader that is merely slow (a room burst over a slow
#: link) is not cut off by one large message. With --max-sessions-per-user 16
#: one account can make the server hold at most 64 MiB this way.
MAX_OUTBOUND_BUFFER = 4 * 1024 * 1024
#: Replies a connection's own frames may queue before the server stops reading
#: it and waits for the client to take them (backpressure): one 64 KiB read of
#: pipelined requests can ask for gigabytes of answers (`who` on a big room), and
#: the event loop must not spend itself on one connection while others wait.
OUTBOX_DRAIN_AT = 64 * 1024


def queued_bytes(transport: Any) -> int:
    """Bytes written but not yet sent, in the TLS layer and the TCP transport beneath it.

    The TLS transport's own get_write_buffer_size() counts only what is not yet
    encrypted: one large write is encrypted at once and handed to the TCP
    transport, where it did not count, so a client that never read could make
    the server hold any amount (a flood of `who` answers held 16 MiB unseen)."""
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    return int(transport.get_write_buffer_size()) + (int(inner.get_write_buffer_size()) if inner else 0)


class Outbox:
    """Coalesces writes: everything queued in one loop turn leaves in one write()."""

    def __init__(self, writer: asyncio.StreamWriter, label: Callable[[], str] = lambda: "") -> None:
        self.writer = writer
        self.label = label
        self._chunks: list[bytes] = []
        self._scheduled = False
        #: Bytes queued in _chunks, not yet written.
        self.pending = 0

    def put(self, data: bytes) -> None:
        self._chunks.append(data)
        self.pending += len(data)
        if self.pending > MAX_OUTBOUND_BUFFER:  # write now, so that the cut-off can happen mid-batch
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._chunks and not self.writer.is_closing():
            self.writer.write(b"".join(self._chunks))
            queued = queued_bytes(self.writer.transport)
            if queued > MAX_OUTBOUND_BUFFER:
                log.warning("%s dropped: not reading (%d bytes queued)", self.label(), queued)
                self.writer.transport.abort()
        self._chunks.clear()
        self.pending = 0

    def cut_off(self) -> bool:
        """True once the connection is closing (cut off, dropped or gone): its frames are not processed."""
        return self.writer.is_closing()


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.capacity = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class Mailbox:
    """Which stored direct messages a session has been sent, in order, exactly once.

    Offers go out in increasing `seq`. While older rows still wait in the
    database (more than one batch was pending), wake-ups are left
    for the next batch, so that per-sender order is kept.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.high = 0  # highest seq offered
        self.outstanding: set[int] = set()
        self.backlog = False

    def offer(self, item: Any) -> None:
        if item.seq <= self.high:
            return
        self.high = item.seq
        self.outstanding.add(item.seq)
        try:
            self.session.send(P.Deliver(item.seq, item.stored_at_ms, item.sender, item.envelope))
        except P.LocalProtocolError:
            pass  # closed: offered again at the next login
        except OversizedError:
            # Stored before intake checked the relayed size, or under a larger --max-frame. It stays
            # stored (a larger limit delivers it) but must never stop this user's logins (issue 2).
            self.outstanding.discard(item.seq)
            log.error("%s message %d not delivered: larger than --max-frame once framed", self.session.label(),
                      item.seq)  # not its sender: the label names the recipient, and who writes to whom is not logged

    def acked(self, seq: int) -> None:
        self.outstanding.discard(seq)


class Session:
    """One connection's state above the wire: who is logged in, what is in flight."""

    def __init__(self, config: ServerConfig, server_line: str, handlers: Handlers, logins: LoginPort,
                 relay: RelayPort, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self.config, self.server_line = config, server_line
        self.handlers, self.logins, self.relay = handlers, logins, relay
        self.reader, self.writer, self.peer = reader, writer, peer
        self.conn = P.Connection("server", config.max_frame)
        self.conn_id = next(_CONNECTION_IDS)
        self.outbox = Outbox(writer, self.label)
        self.user: User | None = None
        #: The key this connection PROVED (LOGIN_KEY, or a password login that registered it with a proof);
        #: None for a password-only login, which is never given the account's key (no mail, no rooms).
        self.identity: PublicIdentity | None = None
        #: The password hash a password login checked: a new one (`user passwd`) ends the session.
        self.password_hash: str | None = None
        #: This session's device id when its key is on the account's device list (docs/PROTOCOL.md 6.7):
        #: its version-2 mail, and only that, is offered here. None: no listed device (version 1).
        self.device: bytes | None = None
        #: A new device waiting to be paired (6.4): only pair_start, pair_complete, PING and BYE.
        self._awaiting_pairing = False
        #: The protocol version agreed at HELLO: 2 if the client listed it (docs/PROTOCOL.md 6.7). A
        #: version-2 session is refused every version-1 envelope in DIRECT and ROOM_KEY.
        self.version = 1
        self.challenge = os.urandom(P.CHALLENGE_SIZE)
        self.bucket = TokenBucket(config.rate, config.burst)
        self.in_flight = asyncio.Semaphore(config.max_in_flight)
        self.pending: set[asyncio.Future[Any]] = set()
        self.started = time.monotonic()
        self.last_heard = self.started  # when bytes last came from the client (see listener._too_many_sessions)
        self.closing = False
        self.rooms: set[str] = set()
        self.mailbox = Mailbox(self)
        #: The place this connection holds among those not logged in (released at LOGIN_OK).
        self.ticket: Ticket | None = None

    def label(self) -> Label:
        """`conn=7 peer=... user=alice` for log lines; JSON logs take its parts as fields."""
        return Label(self.conn_id, self.peer, self.user.name if self.user else None)

    def send(self, event: P.Event) -> None:
        self.outbox.put(self.conn.send(event))
        if isinstance(event, P.Receipt) and self.handlers.metrics is not None:
            self.handlers.metrics.messages_receipted.inc()

    def error(self, code: P.ErrorCode, message: str, *, fatal: bool = False, msg_id: bytes | None = None,
              rid: int | None = None) -> None:
        metrics = self.handlers.metrics
        if metrics is not None and msg_id is not None and code != P.ErrorCode.EXPIRED:
            metrics.messages_refused.labels(code.name.lower()).inc()  # a fixed set: the error code names
        with contextlib.suppress(P.LocalProtocolError):  # already closed: nothing to tell
            self.send(P.Error(int(code), message, fatal, msg_id, rid))

    def end(self, code: P.ErrorCode, message: str) -> None:
        """Send a fatal ERROR and close the connection now. For a session ended by something else (its
        device removed, a newer login, a logout): its read loop waits for the client, which may never
        speak again (the spec-only client's check: a removed device's session held its slot until
        --idle-timeout)."""
        self.error(code, message, fatal=True)
        self.closing = True
        self.outbox.flush()
        self.writer.close()

    @property
    def awaiting_pairing(self) -> bool:
        """A device waiting to be paired (6.4): only REQUESTs (the pairing ops), PING and BYE, checked on the
        type byte before a body is parsed (the spec-only client's check: its malformed frames were BAD_FRAME)."""
        return self._awaiting_pairing

    @awaiting_pairing.setter
    def awaiting_pairing(self, value: bool) -> None:
        self._awaiting_pairing = value
        self.conn.only = PENDING_TYPES if value else None

    # -- the read loop ---------------------------------------------------------------
    def _deadline(self, frame_started: float | None) -> float:
        cfg, now = self.config, time.monotonic()
        limits = [now + cfg.idle_timeout]
        if self.conn.state is not P.State.READY:
            limits.append(self.started + cfg.login_timeout)
        if frame_started is not None:
            limits.append(frame_started + cfg.frame_timeout)
        return min(limits) - now

    async def run(self) -> None:
        frame_started: float | None = None
        while not self.closing and self.conn.state is not P.State.CLOSED:
            timeout = self._deadline(frame_started)
            try:
                if timeout <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                why = "mid-frame stall" if frame_started else (
                    "no login in time" if self.conn.state is not P.State.READY else "idle")
                if why == "idle" and self.handlers.downloading(self):
                    continue  # a client taking a long download sends nothing, and is not idle (re-check)
                log.info("%s closed: timeout (%s)", self.label(), why)
                self.error(P.ErrorCode.TIMEOUT, f"timeout: {why}", fatal=True)
                return
            if not data:
                log.debug("%s disconnected", self.label())
                return
            self.last_heard = time.monotonic()
            try:
                self.conn.receive_data(data)
                while not self.outbox.cut_off() and (event := self.conn.next_event()) is not None:
                    await self.dispatch(event)
                    await self._backpressure()
            except P.ProtocolError as e:
                log.warning("%s dropped: protocol error: %s", self.label(), e)
                self.error(P.ErrorCode(e.code), self._violation_text(P.ErrorCode(e.code)), fatal=True)
                return
            frame_started = (frame_started or time.monotonic()) if self.conn.decoder.partial else None

    def _violation_text(self, code: P.ErrorCode) -> str:
        """What the peer is told about its protocol violation: a fixed text per code, never our parser's words."""
        if code is P.ErrorCode.TOO_LARGE:
            return f"frame larger than the limit of {self.conn.decoder.max_frame} bytes"
        return P.OPAQUE_TEXTS.get(code, P.OPAQUE_TEXTS[P.ErrorCode.BAD_FRAME])

    async def _backpressure(self) -> None:
        """Once this connection's own answers pass OUTBOX_DRAIN_AT, wait until the client takes them.

        Yields the event loop to every other connection meanwhile; a client that
        does not read within --frame-timeout is cut off."""
        if self.outbox.pending <= OUTBOX_DRAIN_AT:
            return
        self.outbox.flush()
        if self.outbox.cut_off():
            return
        try:
            await asyncio.wait_for(self.writer.drain(), self.config.frame_timeout)
        except TimeoutError:
            log.warning("%s dropped: not reading its answers", self.label())
            self.writer.transport.abort()

    def relay_too_large(self, event: P.Event) -> bool:
        """Refuse (non-fatally) a frame whose relayed form could exceed max_frame; True if refused."""
        size = relayed_size(event)
        limit = self.config.max_frame
        if size is None or size <= limit:
            return False
        msg_id = envelope.peek_msg_id(event.envelope) if isinstance(event, P.RoomKey) else answer_ids(event)[0]
        log.info("%s %s refused: %d bytes once relayed", self.label(), event.TYPE.name, size)
        self.error(P.ErrorCode.TOO_LARGE, f"{event.TYPE.name} is too large: relayed with the sender's name it "
                   f"could take {size} bytes, over this server's limit of {limit}", msg_id=msg_id)
        return True

    def relay_over_budget(self, event: P.Event) -> bool:
        """Refuse (non-fatally) a ROOM_SEND or DIRECT beyond this user's relay budget; True if refused."""
        if isinstance(event, P.RoomSend):
            cost = len(event.payload)
        elif isinstance(event, P.Direct):
            cost = len(event.envelope)
        else:
            return False
        assert self.user is not None
        if self.handlers.relay_budget(self.user.id).take(cost):
            return False
        rate = self.config.relay_rate
        log.info("%s %s refused: over the relay rate", self.label(), event.TYPE.name)
        self.error(P.ErrorCode.RATE_LIMITED, f"relay rate exceeded: {int(rate)} bytes per second per user "
                   "(room and direct messages); slow down", msg_id=answer_ids(event)[0])
        return True

    async def dispatch(self, event: P.Event) -> None:
        if isinstance(event, P.Send | P.Direct | P.RoomSend) and self.handlers.metrics is not None:
            self.handlers.metrics.messages_received.labels(event.TYPE.name.lower()).inc()
        if isinstance(event, P.Hello):
            agreed = versions.agreed(event.versions, self.config.serve_version_1)
            if agreed is None:
                log.info("%s dropped: HELLO listing only version 1, which is no longer served", self.label())
                self.error(P.ErrorCode.VERSION, versions.VERSION_1_GONE, fatal=True)
                return
            self.version = agreed
            self.send(P.ServerHello(self.version, self.server_line, self.challenge, self.config.max_frame,
                                    server="securecomm", idle_timeout=max(1, int(self.config.idle_timeout)),
                                    mailbox_ttl=max(0, math.ceil(self.config.mailbox_ttl)), held_ack=True))
        elif isinstance(event, P.LoginPassword):
            await self.logins.login_password(self, event)
        elif isinstance(event, P.LoginKey):
            await self.logins.login_key(self, event)
        elif isinstance(event, P.Ping):
            if isinstance(event, P.Bye):
                self.closing = True
            else:
                self.send(P.Pong())
        elif self.awaiting_pairing and not (isinstance(event, P.Request) and pending_may(event)):
            log.warning("%s dropped: %s from a device waiting to be paired", self.label(), event.TYPE.name)
            # BAD_STATE's fixed text (5.5.1); LOGIN_OK `pending` told the client already
            self.error(P.ErrorCode.BAD_STATE, P.OPAQUE_TEXTS[P.ErrorCode.BAD_STATE], fatal=True)
        elif not self.bucket.take():
            msg_id, rid = answer_ids(event)
            self.error(P.ErrorCode.RATE_LIMITED, "rate limit exceeded; slow down", msg_id=msg_id, rid=rid)
        elif self.relay_too_large(event) or self.relay_over_budget(event):
            return
        elif isinstance(event, P.Send):
            await self.in_flight.acquire()
            self.handlers.handle_send(self, event)
        elif isinstance(event, P.RoomSend):
            self.relay.room_send(self, event)
        elif isinstance(event, P.Direct):
            await self.relay.direct(self, event)
        elif isinstance(event, P.Ack):
            await self.relay.ack(self, event)
        elif isinstance(event, P.RoomKey):
            self.relay.room_key(self, event)
        elif isinstance(event, P.Request):
            await self.handlers.handle_request(self, event)
        elif isinstance(event, FilePut):
            await self.handlers.file_put(self, event)

    def track(self, fut: asyncio.Future[Any], on_done: Callable[[asyncio.Future[Any]], None]) -> None:
        self.pending.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self.pending.discard(f)
            self.in_flight.release()
            on_done(f)

        fut.add_done_callback(done)



def answer_ids(event: P.Event) -> tuple[bytes | None, int | None]:
    """The msg_id / rid an error about `event` carries, so that a pipelining client can match it."""
    from securecomm.crypto import room

    if isinstance(event, P.Send | P.Direct):
        return envelope.peek_msg_id(event.envelope), None
    if isinstance(event, P.RoomSend):
        return room.peek_msg_id(event.payload), None
    if isinstance(event, P.Request):
        return None, event.rid
    if isinstance(event, FilePut):
        return event.file_id, None
    return None, None


