"""The chat loop: connect, join, pump events and typed lines; reconnect with backoff.

Direct messages typed while disconnected, or sent but not yet receipted, stay
in an outbox as sealed envelopes; after a reconnect the same bytes are sent
again, so the server's duplicate check returns the original receipt instead
of storing a second copy. Nothing typed is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import NetworkError, SecurecommError
from securecomm.net.connect import connect_profile
from securecomm.net.messenger import Messenger, Warning

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


@dataclass
class Pending:
    kind: str  # "dm" | "room"
    target: str
    body: bytes
    sealed: bytes | None = None  # for dm: the envelope, resent byte for byte


@dataclass(frozen=True)
class Info:
    text: str

    def __str__(self) -> str:
        return self.text


class ChatSession:
    def __init__(self, paths: Any, identity: PrivateIdentity, user: str, room: str,
                 emit: Callable[[Any], None]) -> None:
        self.paths, self.identity, self.user, self.room = paths, identity, user, room
        self.emit = emit
        self.outbox: list[Pending] = []
        self.messenger: Messenger | None = None

    async def run(self, lines: asyncio.Queue[str | None]) -> None:
        delay = BACKOFF_START
        while True:
            try:
                client, _ = await connect_profile(self.paths, self.identity)
            except NetworkError as e:
                self.emit(Warning(f"cannot connect ({e.message}); retrying in {delay:.1f}s"))
                if await self._wait_or_quit(lines, delay):
                    return
                delay = min(BACKOFF_MAX, delay * 2) * random.uniform(0.8, 1.2)
                continue
            delay = BACKOFF_START
            async with client:
                self.messenger = Messenger(client, self.identity, self.user, self.paths, self.emit)
                try:
                    if await self._connected(client, lines):
                        return
                except NetworkError as e:
                    self.emit(Warning(f"connection lost ({e.message}); reconnecting"))

    async def _wait_or_quit(self, lines: asyncio.Queue[str | None], delay: float) -> bool:
        """Sleep `delay`, still taking input (queued for later); True if the user quit."""
        deadline = asyncio.get_running_loop().time() + delay
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                line = await asyncio.wait_for(lines.get(), left)
            except TimeoutError:
                return False
            if line is None or line.strip() == "/quit":
                return True
            self._queue_line(line)
        return False

    def _queue_line(self, line: str) -> None:
        if line.startswith("/msg "):
            parts = line.split(" ", 2)
            if len(parts) == 3:
                self.outbox.append(Pending("dm", parts[1], parts[2].encode()))
        elif line.strip() and not line.startswith("/"):
            self.outbox.append(Pending("room", self.room, line.encode()))
        self.emit(Info("(queued until reconnected)"))

    async def _connected(self, client: Any, lines: asyncio.Queue[str | None]) -> bool:
        assert self.messenger is not None
        m = self.messenger
        pump = asyncio.create_task(m.run())
        try:
            members = await m.join(self.room)
            self.emit(Info(f"joined #{self.room}: {', '.join(members)}"))
            for item in list(self.outbox):
                await self._send(item)
            while True:
                getter = asyncio.create_task(lines.get())
                done, _ = await asyncio.wait({getter, pump}, return_when=asyncio.FIRST_COMPLETED)
                if pump in done:
                    getter.cancel()
                    pump.result()  # raises the connection's error
                    return True
                line = getter.result()
                if line is None or line.strip() == "/quit":
                    return True
                await self._command(line)
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump

    async def _command(self, line: str) -> None:
        assert self.messenger is not None
        m = self.messenger
        try:
            if line.startswith("/join "):
                new = line.split(None, 1)[1].strip().lower()
                await m.leave(self.room)
                self.room = new
                self.emit(Info(f"joined #{new}: {', '.join(await m.join(new))}"))
            elif line.strip() == "/who":
                self.emit(Info(f"in #{self.room}: {', '.join(await m.who(self.room))}"))
            elif line.startswith("/msg "):
                parts = line.split(" ", 2)
                if len(parts) < 3 or not parts[2]:
                    self.emit(Info("usage: /msg USER text"))
                    return
                item = Pending("dm", parts[1].lower(), parts[2].encode())
                self.outbox.append(item)
                await self._send(item)
            elif line.startswith("/"):
                self.emit(Info("commands: /join ROOM, /who, /msg USER text, /quit"))
            elif line.strip():
                item = Pending("room", self.room, line.encode())
                self.outbox.append(item)
                await self._send(item)
        except NetworkError:
            raise
        except SecurecommError as e:
            self.emit(Warning(e.message + (f" ({e.hint})" if e.hint else "")))

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
        except NetworkError:
            raise
        except SecurecommError:
            self.outbox.remove(item)  # refused for good (unknown user, changed key): not retried
            raise
        self.outbox.remove(item)
