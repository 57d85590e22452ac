"""The bus seam over NATS (core subjects, no JetStream): several relays reach each other's sessions.

Theory of operation
-------------------
Each relay holds one NATS connection and subscribes only to what its own
sessions need (interest, not broadcast):

    securecomm.u.<user id>    while a session of that user is connected here:
                              b"m" [+ ITEM] "user U has new mail": ITEM, the stored message (server/relay.py
                                            encodes it; pushed if nothing older can be missing), else
                                            read it from the store
                              b"f" + FRAME  an encoded frame for U's sessions (delivery receipt, room key)
    securecomm.r.<room hex>   while a member of that room is connected here: the encoded room frame
    securecomm.p.<room hex>   likewise: membership news between relays (server/relay.py, _presence)

so a room line crosses NATS once per relay that has members in the room, not
once per member. The connection is opened with `no_echo`: what this relay
publishes it delivers to its own sessions at once (the LocalBus path), and
NATS carries it only to the others.

NATS is not the store of record. A lost mail wake-up (a relay restarting,
NATS down) only delays mail: the relay reads the store again at the next
login, acknowledgement or wake-up, after a new subscription is confirmed,
and for every connected user after a reconnection. A lost room line is
lost for the members on the relays that missed it (rooms are live only).

Publishes and (un)subscriptions go through one bounded queue drained by one
task, in order, so a subscription is in place before what follows it; when
the queue is full (NATS far behind) new items are dropped and counted, the
relay keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from securecomm.errors import NetworkError, UsageError
from securecomm.net.bus import LocalBus
from securecomm.store.urls import redact

log = logging.getLogger("securecomm.server")

#: Items (publishes, subscriptions) waiting for the NATS connection. 64 Ki items
#: cover a ~1 s stall at the relay's peak rate; beyond it wake-ups are dropped
#: (the store still holds the mail) rather than growing memory without bound.
BUS_QUEUE = 64 * 1024
#: Seconds between reconnection attempts (nats-py adds jitter); attempts never stop.
RECONNECT_WAIT = 0.5
#: Seconds to wait for NATS at start before refusing to serve.
CONNECT_TIMEOUT = 2
PREFIX = "securecomm"
MAIL = b"m"
FRAME = b"f"


def shown_url(url: str) -> str:
    """The URL without any user or password in it (for logs and error lines)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{parts.port}" if parts.port else "")


def check_url(url: str) -> str:
    """A nats:// URL with a host, or a UsageError saying what is expected."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        raise UsageError(f"--bus must be a nats://HOST:PORT URL, not {redact(url)[:80]!r}")
    return url


def user_subject(user_id: int) -> str:
    return f"{PREFIX}.u.{user_id}"


def presence_subject(room: str) -> str:
    return f"{PREFIX}.p.{room.encode().hex()}"


def room_subject(room: str) -> str:
    # hex: room names may hold '.', NATS's token separator, so they are not used as tokens
    return f"{PREFIX}.r.{room.encode().hex()}"


class NatsBus(LocalBus):
    """LocalBus for this relay's own sessions, plus NATS to and from the other relays."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = check_url(url)
        self.shown = shown_url(url)
        self._nc: Any = None
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(BUS_QUEUE)
        self._subs: dict[str, Any] = {}
        #: Per subscribed subject: done once NATS has confirmed the subscription.
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._users: dict[int, int] = {}
        self._rooms: dict[str, int] = {}
        self._pump: asyncio.Task[None] | None = None
        self.dropped = 0
        self._closing = False
        self._presence: list[Any] = []
        #: The last connection error nats-py reported (for the start-up error line).
        self._last_error = ""

    def describe(self) -> str:
        return f"NATS at {self.shown}"

    @property
    def engine(self) -> str:
        return "nats"

    # -- lifecycle ---------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect (NetworkError naming the URL if NATS cannot be reached) and start the pump."""
        try:
            import nats
        except ImportError as e:
            raise UsageError("--bus needs the cluster extra, which is not installed",  # store/backends.py CLUSTER_HINT
                             hint="pip install 'securecomm[cluster]' (from a checkout: "
                                  ".venv/bin/pip install '.[cluster]')") from e
        try:
            # nats-py retries a first connection as long as later ones (forever): bounded here
            self._nc = await asyncio.wait_for(nats.connect(
                self.url, no_echo=True, connect_timeout=CONNECT_TIMEOUT, allow_reconnect=True,
                max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type,unused-ignore]
                disconnected_cb=self._lost, reconnected_cb=self._back, error_cb=self._error, name="securecomm"),
                2 * CONNECT_TIMEOUT)
        except Exception as e:
            why = self._last_error or type(e).__name__
            raise NetworkError(f"cannot reach the bus at {self.shown} within {2 * CONNECT_TIMEOUT} s: {why}",
                               hint="start nats-server there, or check --bus") from None
        self._pump = asyncio.create_task(self._drain(), name="securecomm-bus")
        log.info("bus: %s", self.describe())
        if "@" not in self.url.split("//", 1)[-1].split("/", 1)[0]:
            # the attacker's check (stop 26): what any process that reaches NATS can do to users' sessions
            log.warning("bus: %s is used without a user or token: any process that reaches it can wake relays, "
                        "list fake room members and send frames toward users' sessions; give NATS credentials "
                        "(README: Several relays)", self.shown)

    async def close(self) -> None:
        self._closing = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def _lost(self) -> None:
        if self._closing:
            return
        log.warning("bus lost: %s unreachable; reconnecting every %.1f s (mail still flows from the store)",
                    self.shown, RECONNECT_WAIT)

    async def _back(self) -> None:
        log.warning("bus reconnected to %s; rereading the store for every connected user", self.shown)
        for user_id in list(self._users):  # wake-ups published while we were away are lost: the store is not
            super().publish_mail(user_id)

    async def _error(self, e: Exception) -> None:
        # nats-py's words, without the URL's user or password should they quote it
        self._last_error = re.sub(r"//[^/@\s]*@", "//", str(e).replace(self.url, self.shown))[:200] or type(e).__name__
        if self._nc is None and not self._closing:  # still starting: the operator must see why it waits
            log.warning("bus: cannot connect to %s: %s; retrying for %d s", self.shown, self._last_error,
                        2 * CONNECT_TIMEOUT)
        else:  # running: `bus lost` said so once (WARNING); each retry is routine
            log.info("bus: %s", self._last_error)

    # -- publishing --------------------------------------------------------------------
    def publish_mail(self, user_id: int, item: bytes = b"") -> None:
        super().publish_mail(user_id, item)
        self._put("pub", user_subject(user_id), MAIL + item)

    def publish_user(self, user_id: int, frame: bytes) -> None:
        super().publish_user(user_id, frame)
        self._put("pub", user_subject(user_id), FRAME + frame)

    def publish_room(self, room: str, frame: bytes, origin: object = None) -> None:
        super().publish_room(room, frame, origin)
        self._put("pub", room_subject(room), frame)

    def publish_presence(self, room: str, data: bytes) -> None:
        self._put("pub", presence_subject(room), data)

    def on_presence(self, handler: Any) -> None:
        self._presence.append(handler)

    # -- interest ----------------------------------------------------------------------
    def watch_user(self, user_id: int) -> None:
        if _count_up(self._users, user_id):
            self._put("sub", user_subject(user_id), b"")

    def unwatch_user(self, user_id: int) -> None:
        if _count_down(self._users, user_id):
            self._put("unsub", user_subject(user_id), b"")

    def watch_room(self, room: str) -> asyncio.Future[None]:
        """Subscribe to the room's lines; the future is done once they reach this relay (join answers then)."""
        subject = room_subject(room)
        if _count_up(self._rooms, room):
            self._ready[subject] = asyncio.get_running_loop().create_future()
            self._put("sub", presence_subject(room), b"")  # first: the room's future is done after both
            self._put("sub", subject, b"")
        return self._ready[subject]

    def unwatch_room(self, room: str) -> None:
        if _count_down(self._rooms, room):
            self._ready.pop(room_subject(room), None)
            self._put("unsub", room_subject(room), b"")
            self._put("unsub", presence_subject(room), b"")

    # -- the pump ----------------------------------------------------------------------
    def _put(self, op: str, subject: str, data: bytes) -> None:
        try:
            self._queue.put_nowait((op, subject, data))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8...: a flood does not flood the log
                log.warning("bus queue full: %d bus items dropped so far (mail is still read from the store)",
                            self.dropped)

    async def _drain(self) -> None:
        while True:
            op, subject, data = await self._queue.get()
            try:
                await self._apply(op, subject, data)
            except Exception as e:  # NATS trouble must not end the pump: the store is the truth
                log.warning("bus %s on %s failed: %s", op, subject, str(e)[:200] or type(e).__name__)
            ready = self._ready.get(subject) if op == "sub" else None
            if ready is not None and not ready.done():  # also after a failure: a join must not hang on it
                ready.set_result(None)

    async def _apply(self, op: str, subject: str, data: bytes) -> None:
        if op == "pub":
            await self._nc.publish(subject, data)
        elif op == "sub" and subject not in self._subs:
            self._subs[subject] = await self._nc.subscribe(subject, cb=self._received)
            await self._at_nats()  # in place at the server: from here no wake-up for it is missed
            self._subscribed(subject)
        elif op == "unsub" and subject in self._subs:
            await self._subs.pop(subject).unsubscribe()

    async def _at_nats(self) -> None:
        """Return once NATS has every command this relay queued before the call.

        One flush() does not prove it: nats-py writes flush's PING straight to the socket, ahead of
        a SUB still queued for its flusher task, so NATS can answer PONG before it has the SUB, and a
        wake-up published in that gap is lost (a CI run lost one). The SUB woke the flusher before
        the first PING was written, and the flusher runs before that PING's PONG can be read, so
        the second PING goes out behind the SUB and its PONG means the SUB is in place.
        """
        await self._nc.flush()
        await self._nc.flush()

    def _subscribed(self, subject: str) -> None:
        """A wake-up published before the subscription reached NATS was missed: read the store once."""
        for user_id in self._users:
            if user_subject(user_id) == subject:
                super().publish_mail(user_id)
                return

    async def _received(self, msg: Any) -> None:
        subject, data = msg.subject, bytes(msg.data)
        kind, _, key = subject.removeprefix(PREFIX + ".").partition(".")
        if kind == "r":
            super().publish_room(bytes.fromhex(key).decode(), data, None)
        elif kind == "p":
            room = bytes.fromhex(key).decode()
            for handler in self._presence:
                handler(room, data)
        elif kind == "u" and data[:1] == MAIL:
            super().publish_mail(int(key), data[1:])
        elif kind == "u" and data[:1] == FRAME:
            super().publish_user(int(key), data[1:])


def _count_up(counts: dict[Any, int], key: Any) -> bool:
    """Count one more holder of `key`; True for the first."""
    counts[key] = counts.get(key, 0) + 1
    return counts[key] == 1


def _count_down(counts: dict[Any, int], key: Any) -> bool:
    """Count one holder less; True when the last one went."""
    if key not in counts:
        return False
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
        return False
    counts.pop(key, None)
    return True
