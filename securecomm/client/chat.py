"""The chat loop: connect, join, pump events and typed lines; reconnect with backoff.

Theory of operation
-------------------
    connect --ok--> join the room --> resend direct messages --> lines and events
       ^   |                              (room lines typed offline held, see below)
       |   +--fails--> wait (BACKOFF_START doubling up to BACKOFF_MAX, jittered; input queued)
       +---- connection lost, or the server shutting down (a planned restart) ----+

Anything else (refused login, changed server identity) ends chat with its error, and so
does a first connection that fails: a server that is down or a wrong address is reported
at once (exit 7), as `send` does.

Direct messages typed while disconnected, or sent but not yet receipted, stay
in an outbox as sealed envelopes; after a reconnect the same bytes are sent
again, so the server's duplicate check returns the original receipt instead
of storing a second copy.

Room lines typed while disconnected cannot be stored by the server (a room
message reaches only the members present when it is relayed), and after a
server restart the other members come back one by one. So they are held
until every member who was in the room before the outage is back and has our
new sender key (at most REJOIN_WAIT), then sent in order. Each line that a
member still missing then did not get is named in a warning: nothing typed is
lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securecomm.client.directv2 import SealedDirect
from securecomm.client.events import Alert, DirectMessage, Membership, printable
from securecomm.client.files import send_file, shown_body
from securecomm.client.login import connect_profile
from securecomm.client.messenger import Messenger
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import (
    NetworkError,
    SecurecommError,
    SessionLimitError,
    SessionReplacedError,
    ShuttingDownError,
    UsageError,
)

BACKOFF_START = 0.5
#: A planned restart takes a second or two; waiting longer between attempts only delays people.
BACKOFF_MAX = 4.0
#: How long room lines typed offline wait for the members of before the outage to come back.
REJOIN_WAIT = 20.0
#: How long /quit (or end of input) waits for receipts of lines still in flight: a working server
#: answers in milliseconds; one that withholds a receipt must not hold chat for REPLY_TIMEOUT.
QUIT_GRACE = 2.0


@dataclass
class Pending:
    kind: str  # "dm" | "room"
    target: str
    body: bytes
    sealed: SealedDirect | None = None  # for dm: the envelopes, resent byte for byte


@dataclass(frozen=True)
class Info:
    text: str

    def __str__(self) -> str:
        return self.text


def room_name(name: str) -> str:
    """A valid room name (rooms follow the user-name rule), or a usage error that says "room"."""
    from securecomm.store.db import normalise_name

    try:
        return normalise_name(name)
    except UsageError:
        raise UsageError(f"room name {name!r} must be 1-32 characters of a-z 0-9 _ . -") from None


#: Seconds a /send keeps resuming its upload after dropped connections.
FILE_TIMEOUT = 120.0


# -- the commands a ChatSession takes (cli/slash.py reads them from typed lines) ---------------
@dataclass(frozen=True)
class Say:
    """A line for the room, as typed (a blank one is ignored)."""

    text: str


@dataclass(frozen=True)
class Join:
    room: str  # as typed: checked by room_name() when run


@dataclass(frozen=True)
class Who:
    pass


@dataclass(frozen=True)
class Msg:
    user: str
    text: str


@dataclass(frozen=True)
class SendFile:
    """/send USER PATH: a file, sealed and uploaded in the background (client/files.py)."""

    user: str
    path: str


@dataclass(frozen=True)
class Trust:
    user: str
    fingerprint: str | None  # None: show the new key; else accept it


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Invalid:
    """A line that is not a valid command: `text` says why. `offline_too`: said even while disconnected."""

    text: str
    offline_too: bool = False


Command = Say | Join | Who | Msg | SendFile | Trust | Quit | Invalid


def retryable(e: SecurecommError, replaced_at: float | None = None) -> bool:
    """A dropped connection or a planned shutdown: reconnecting can help. Also the session limit within
    REPLACED_RETRY s of this client's session being replaced by a newer login (`replaced_at`, monotonic):
    that newer session is usually gone within a second (the re-check, stop 26: chat exited 9 then)."""
    if isinstance(e, SessionLimitError):
        return replaced_at is not None and time.monotonic() - replaced_at < REPLACED_RETRY
    return isinstance(e, NetworkError | ShuttingDownError)


#: Seconds after a replacement during which the session limit at login is retried (with the usual backoff).
REPLACED_RETRY = 60.0


def _reason(e: SecurecommError) -> str:
    # The client already says "connection lost: ..."; the caller says it once.
    return e.message.removeprefix("connection lost: ")


class ChatSession:
    def __init__(self, paths: Any, identity: PrivateIdentity, user: str, room: str,
                 emit: Callable[[Any], None], *, server: str | None = None, ca: str | None = None,
                 pin: str | None = None, command: str = "securecomm") -> None:
        self.paths, self.identity, self.user, self.room = paths, identity, user, room
        self.command = command  # `securecomm` with the user's --home, for the commands shown
        #: --server/--ca/--pin of `chat`, used on every (re)connect; None: the saved profile's.
        self.server, self.ca, self.pin = server, ca, pin
        self.emit = emit
        self.outbox: list[Pending] = []
        self._file_jobs: set[asyncio.Future[None]] = set()  # /send uploads running in the background
        self.messenger: Messenger | None = None
        self.present: set[str] = set()  # the other members of self.room, as the server last listed them
        self.awaited: set[str] = set()  # members that held room lines wait for
        self.changed = asyncio.Event()  # set on every join/leave in self.room
        self.flush: asyncio.Task[None] | None = None  # sends held room lines
        #: Lines being sent, each waiting for its receipt: in the background, so that a server that
        #: withholds a receipt cannot block the input line or /quit for REPLY_TIMEOUT.
        self.sending: set[asyncio.Task[None]] = set()

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, Membership) and ev.room == self.room:
            if ev.event == "joined":
                self.present.add(ev.user)
            else:
                self.present.discard(ev.user)
            self.changed.set()
        if isinstance(ev, DirectMessage):
            # a file notice is saved for `fetch ID` (not our own copy of a file we sent) and shown as a line
            body, _, _ = shown_body(self.paths, ev, self.identity, self.command)
            if body is not ev.body:
                ev = dataclasses.replace(ev, body=body)
        self.emit(ev)

    async def run(self, lines: asyncio.Queue[Command | None]) -> None:
        """Run until Quit or None (end of input) arrives on `lines`."""
        delay = BACKOFF_START
        connected_once = False
        replaced_at: float | None = None
        while True:
            try:
                client, _ = await connect_profile(self.paths, self.identity, server=self.server, ca=self.ca,
                                                  pin=self.pin)
            except SecurecommError as e:
                # Never connected: a server that is down or a wrong address is reported at once,
                # exactly as `send` does; backoff is for getting back a connection we had.
                if not retryable(e, replaced_at) or not connected_once:
                    raise
                self.emit(Alert(f"{e.message}; retrying in {delay:.1f}s"))
                if await self._wait_or_quit(lines, delay):
                    return
                delay = min(BACKOFF_MAX, delay * 2 * random.uniform(0.8, 1.2))
                continue
            delay, connected_once = BACKOFF_START, True
            async with client:
                # ahead: a conversation's next message finds its prekeys claimed (6.13)
                self.messenger = Messenger(client, self.identity, self.user, self.paths, self._on_event,
                                           ahead=True)
                try:
                    if await self._connected(lines):
                        return
                except SecurecommError as e:
                    if not retryable(e):
                        raise
                    if isinstance(e, SessionReplacedError):
                        replaced_at = time.monotonic()
                    self.emit(Alert(f"connection lost: {_reason(e)}; reconnecting"))

    async def _wait_or_quit(self, lines: asyncio.Queue[Command | None], delay: float) -> bool:
        """Sleep `delay`, still taking input (queued for later); True if the user quit."""
        deadline = asyncio.get_running_loop().time() + delay
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                line = await asyncio.wait_for(lines.get(), left)
            except TimeoutError:
                return False
            if line is None or isinstance(line, Quit):
                return True
            self._queue_line(line)
        return False

    def _queue_line(self, line: Command) -> None:
        if isinstance(line, Invalid) and line.offline_too:
            self.emit(Info(line.text))
        elif isinstance(line, Msg):
            self.outbox.append(Pending("dm", line.user, line.text.encode()))
            self.emit(Info("(queued until reconnected)"))
        elif isinstance(line, Say) and line.text.strip():
            self.outbox.append(Pending("room", self.room, line.text.encode()))
            self.emit(Info(f"(queued until reconnected and the members of #{self.room} are back)"))
        else:
            self.emit(Info("(not connected: only text and /msg are queued)"))

    async def _connected(self, lines: asyncio.Queue[Command | None]) -> bool:
        assert self.messenger is not None
        m = self.messenger
        pump = asyncio.create_task(m.run())
        try:
            awaited = self.awaited | self.present  # who was here before the outage
            members = await m.join(self.room)
            self.present = set(members) - {self.user}
            self.emit(Info(f"joined #{self.room}: {', '.join(members)}"))
            for item in [i for i in self.outbox if i.kind == "dm"]:
                await self._send_or_warn(item)
            if any(i.kind == "room" for i in self.outbox):
                self.awaited = awaited
                self.flush = asyncio.create_task(self._send_held())
            return await self._loop(lines, pump)
        finally:
            for task in (pump, self.flush, *self.sending):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            self.flush = None
            self.sending.clear()

    async def _loop(self, lines: asyncio.Queue[Command | None], pump: asyncio.Task[None]) -> bool:
        """Lines and events until the user quits (True) or the connection fails (raises)."""
        while True:
            getter = asyncio.create_task(lines.get())
            waits: set[asyncio.Task[Any]] = {getter, pump, *self.sending} | ({self.flush} if self.flush else set())
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            line: Command | None = None
            if getter.done():
                line = getter.result()
                if line is None or isinstance(line, Quit):  # first: /quit wins over a connection that just ended
                    if pump not in done:  # (the new-user check: it was queued as "not connected" and ignored)
                        await self._finish_sending()
                    return True
            else:
                getter.cancel()  # a cancelled get() leaves its line in the queue
            try:
                if self.flush is not None and self.flush in done:
                    task, self.flush = self.flush, None
                    task.result()  # raises the connection's error
                for task in done & self.sending:
                    self.sending.discard(task)
                    task.result()  # a lost connection: reconnect, and the outbox resends
                if pump in done:
                    pump.result()  # raises the connection's error
                    return True
            except BaseException:
                if line is not None:
                    self._queue_line(line)  # typed as the connection ended: queued like any line while away
                raise
            if line is not None:
                await self._command(line)

    def _in_background(self, item: Pending) -> None:
        """Send `item` without waiting for its receipt here (see `sending`)."""
        async def send() -> None:
            try:
                await self._send(item)
            except SecurecommError as e:
                if retryable(e):
                    raise
                self.emit(Alert(e.message + (f" ({e.hint})" if e.hint else "")))

        self.sending.add(asyncio.create_task(send()))

    async def _finish_sending(self) -> None:
        """On the way out: lines still in flight get QUIT_GRACE for their receipts (a piped
        `/msg` then end of input still sends), no more; the ones unconfirmed are named."""
        if self.sending:
            await asyncio.wait(self.sending, timeout=QUIT_GRACE)
        for item in self.outbox:
            self.emit(Alert(f"quit before the server confirmed this line to {printable(item.target.encode())}; "
                              f"it may not have been sent: {printable(item.body)}"))

    def _keyed(self) -> set[str]:
        """Members of the room as we last heard; each gets our current sender key before our next
        room line (Messenger.seal_room settles pending joins and leaves first)."""
        assert self.messenger is not None
        state = self.messenger.rooms.get(self.room)
        return set(state.members) if state is not None else set()

    async def _send_held(self) -> None:
        """Wait (at most REJOIN_WAIT) for the awaited members, then send held room lines in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REJOIN_WAIT
        if missing := self.awaited - self._keyed():
            n = sum(i.kind == "room" for i in self.outbox)
            self.emit(Info(f"(holding {n} line{'s' if n > 1 else ''} typed while disconnected until these members "
                           f"are back in #{self.room}: {', '.join(sorted(missing))}; at most {REJOIN_WAIT:.0f}s)"))
        while self.awaited - self._keyed() and (left := deadline - loop.time()) > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        while held := [i for i in self.outbox if i.kind == "room"]:
            self._warn_undelivered(held[0])
            await self._send_or_warn(held[0])
        self.awaited = set()

    def _warn_undelivered(self, item: Pending) -> None:
        """Say plainly who will not get a held line: nothing typed disappears without a word."""
        text = printable(item.body)
        if item.target != self.room:
            self.emit(Alert(f"NOT delivered (you left #{item.target}): {text}"))
            return
        missing, keyed = self.awaited - self._keyed(), self._keyed()
        if missing:
            self.emit(Alert(f"NOT delivered to {', '.join(sorted(missing))} (not back in #{item.target} "
                              f"after {REJOIN_WAIT:.0f}s): {text}"))
        elif not keyed:
            self.emit(Alert(f"NOT delivered to anyone (nobody else is in #{item.target}): {text}"))

    async def _send_or_warn(self, item: Pending) -> None:
        if item.kind == "room" and item.target != self.room:
            self.outbox.remove(item)  # already warned: the room was left
            return
        try:
            await self._send(item)
        except SecurecommError as e:
            if retryable(e):
                raise
            self.emit(Alert(f"not sent to {item.target}: {e.message}"))

    async def _command(self, line: Command) -> None:
        assert self.messenger is not None
        m = self.messenger
        try:
            if isinstance(line, Join):
                new = room_name(line.room)
                await m.leave(self.room)
                self.room = new
                members = await m.join(new)
                self.present = set(members) - {self.user}
                self.emit(Info(f"joined #{new}: {', '.join(members)}"))
            elif isinstance(line, Who):
                self.emit(Info(f"in #{self.room}: {', '.join(await m.who(self.room))}"))
            elif isinstance(line, Msg):
                item = Pending("dm", line.user, line.text.encode())
                self.outbox.append(item)
                self._in_background(item)
            elif isinstance(line, SendFile):
                self._send_file(line.user, line.path)
            elif isinstance(line, Trust):
                # accepting a key is what `contacts trust` does, and completes the room key exchange
                self.emit(Info(await m.trust(line.user, line.fingerprint)))
            elif isinstance(line, Invalid):
                self.emit(Info(line.text))
            elif isinstance(line, Say) and line.text.strip():
                self._room_line(line.text)
                if self.flush is None:
                    self._in_background(self.outbox[-1])
        except SecurecommError as e:
            if retryable(e):
                raise
            self.emit(Alert(e.message + (f" ({e.hint})" if e.hint else "")))

    def _send_file(self, user: str, where: str) -> None:
        """/send USER PATH: the file goes out in the background over its own connections
        (client/files.py), so chat keeps working while it seals and uploads."""
        from pathlib import Path

        from securecomm.files import open_input

        path = Path(where)

        async def connect() -> Any:
            return await connect_profile(self.paths, self.identity, server=self.server, ca=self.ca, pin=self.pin)

        async def job() -> None:
            try:
                with open_input(path) as src:
                    file_id, sealed = await send_file(connect, self.identity, self.paths, user, src, path.name,
                                                      0, FILE_TIMEOUT, lambda text: self.emit(Info(text)),
                                                      lambda size, label: contextlib.nullcontext())
                self.emit(Info(f"file {sealed.name} ({sealed.size} bytes) stored for {user} "
                               f"(id {file_id.hex()})"))
            except SecurecommError as e:
                self.emit(Alert(f"file '{path.name}' not sent to {user}: {e.message}"))

        try:  # a missing or unreadable path is told at once, not after "sending ..." (the new-user check)
            open_input(path).close()
        except SecurecommError as e:
            self.emit(Alert(f"file '{path.name}' not sent to {user}: {e.message}"))
            return
        self.emit(Info(f"sending {path.name} to {user} in the background..."))
        task = asyncio.ensure_future(job())
        self._file_jobs.add(task)
        task.add_done_callback(self._file_jobs.discard)

    def _room_line(self, line: str) -> None:
        self.outbox.append(Pending("room", self.room, line.encode()))
        if self.flush is not None:  # keep order: behind the lines still held
            waiting = ", ".join(sorted(self.awaited - self._keyed()))
            self.emit(Info(f"(held until these members are back in #{self.room}: {waiting})" if waiting
                           else "(sent after the lines typed while disconnected)"))

    async def _send(self, item: Pending) -> None:
        assert self.messenger is not None
        m = self.messenger
        try:
            if item.kind == "room":
                await m.send_room(item.target, item.body)
            else:
                if item.sealed is None:
                    item.sealed = await m.seal_direct(item.target, item.body)
                await m.send_sealed_direct(item.target, item.sealed)
        except SecurecommError as e:
            if not retryable(e):
                self.outbox.remove(item)  # refused for good (unknown user, changed key): not retried
            raise
        self.outbox.remove(item)
