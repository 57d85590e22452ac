"""The bus seam: "user U has mail" and "room R event", published by the relay that saw them.

Theory of operation
-------------------
The store is the truth; the bus only wakes. A mail wake-up carries the user
id and, optionally, the stored message itself (`item`: opaque bytes the relay
encodes, server/relay.py): whoever holds a session of that user pushes the
carried message when nothing older can be missing, else reads the mailbox
from the store (so a relay that misses a wake-up still delivers at the next
login or acknowledgement). A room event carries the encoded frame, because rooms
are not stored: the bytes are the event. `origin` names the publishing
connection so that it is not sent its own frame back. A user frame (a
delivery receipt, a room key) is for every session of one user, wherever it is
connected.

`watch_user` / `watch_room` (and their `unwatch_`) say what this relay's
sessions need, counted per holder: a bus that spans relays subscribes to
exactly that (net/nats_bus.py), so a room line reaches each relay once.

`LocalBus` is the in-process implementation (one relay: publishing calls the
subscribers at once, which is today's direct delivery); a NATS implementation
for several relays provides the same four methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

MailHandler = Callable[[int, bytes], None]
RoomHandler = Callable[[str, bytes, object], None]
UserHandler = Callable[[int, bytes], None]
PresenceHandler = Callable[[str, bytes], None]


class Bus(Protocol):
    def publish_mail(self, user_id: int, item: bytes = b"") -> None:
        """A message for `user_id` has been committed to the store (`item`: it, encoded, or b"")."""
        ...

    def publish_room(self, room: str, frame: bytes, origin: object = None) -> None:
        """`frame` (an encoded ROOM_MESSAGE or ROOM_EVENT) is for every member of `room` but `origin`."""
        ...

    def publish_user(self, user_id: int, frame: bytes) -> None:
        """`frame` (an encoded event) is for every session of `user_id`, on any relay."""
        ...

    def on_mail(self, handler: MailHandler) -> None: ...
    def on_room(self, handler: RoomHandler) -> None: ...
    def on_user(self, handler: UserHandler) -> None: ...

    def publish_presence(self, room: str, data: bytes) -> None:
        """Room membership news for the OTHER relays (who is here, who left, who is there?)."""
        ...

    def on_presence(self, handler: PresenceHandler) -> None: ...
    def watch_user(self, user_id: int) -> None: ...
    def unwatch_user(self, user_id: int) -> None: ...
    def watch_room(self, room: str) -> Awaitable[None] | None:
        """Count one more member here; an awaitable (if any) is done once the room's lines reach this relay."""
        ...

    def unwatch_room(self, room: str) -> None: ...
    def describe(self) -> str: ...

    @property
    def engine(self) -> str:
        """The bus's kind as `status` shows it ("in-process", "nats"), never where it is."""
        ...


class LocalBus:
    """Publishing calls this process's subscribers synchronously, in subscription order."""

    def __init__(self) -> None:
        self._mail: list[MailHandler] = []
        self._room: list[RoomHandler] = []
        self._user: list[UserHandler] = []

    def publish_mail(self, user_id: int, item: bytes = b"") -> None:
        for handler in self._mail:
            handler(user_id, item)

    def publish_room(self, room: str, frame: bytes, origin: object = None) -> None:
        for handler in self._room:
            handler(room, frame, origin)

    def publish_user(self, user_id: int, frame: bytes) -> None:
        for handler in self._user:
            handler(user_id, frame)

    def on_mail(self, handler: MailHandler) -> None:
        self._mail.append(handler)

    def on_room(self, handler: RoomHandler) -> None:
        self._room.append(handler)

    def on_user(self, handler: UserHandler) -> None:
        self._user.append(handler)

    # One process holds every session and member: nothing to tell others, nothing to subscribe to.
    def publish_presence(self, room: str, data: bytes) -> None:
        pass

    def on_presence(self, handler: PresenceHandler) -> None:
        pass

    def watch_user(self, user_id: int) -> None:
        pass

    def unwatch_user(self, user_id: int) -> None:
        pass

    def watch_room(self, room: str) -> Awaitable[None] | None:
        return None

    def unwatch_room(self, room: str) -> None:
        pass

    def describe(self) -> str:
        return "in-process (one relay)"

    @property
    def engine(self) -> str:
        return "in-process"
