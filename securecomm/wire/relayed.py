"""Messages the server relays between users: direct messages, deliveries, rooms.

Binary layouts carry names as `len u8 || ASCII`. See docs/PROTOCOL.md section 4.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from securecomm.errors import RemoteProtocolError
from securecomm.wire.messages import Event, MsgType, _dump, _field, _load_json


def _name_prefixed(body: bytes, what: str) -> tuple[str, bytes]:
    """`len u8 || name (ASCII) || rest`: how binary messages carry a user or room name."""
    if not body:
        raise RemoteProtocolError(f"{what} is truncated")
    n = body[0]
    if n == 0 or len(body) < 1 + n:
        raise RemoteProtocolError(f"{what} has a bad name length")
    try:
        name = body[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError as e:
        raise RemoteProtocolError(f"{what} name is not ASCII") from e
    return name, body[1 + n :]


def _prefix(name: str) -> bytes:
    raw = name.encode("ascii")
    if not 0 < len(raw) < 256:
        raise ValueError("name must be 1-255 ASCII bytes")
    return bytes([len(raw)]) + raw


@dataclass(frozen=True)
class Direct(Event):
    """An end-to-end envelope for user `to`; the server stores and forwards it."""

    TYPE: ClassVar[MsgType] = MsgType.DIRECT
    to: str
    envelope: bytes

    def encode_body(self) -> bytes:
        return _prefix(self.to) + self.envelope

    @classmethod
    def decode_body(cls, body: bytes) -> Direct:
        to, rest = _name_prefixed(body, "direct message")
        if not rest:
            raise RemoteProtocolError("direct message has no envelope")
        return cls(to, rest)


_DELIVER = struct.Struct(">QQ")


@dataclass(frozen=True)
class Deliver(Event):
    """A stored direct message handed to its recipient; `seq` is what ACK names."""

    TYPE: ClassVar[MsgType] = MsgType.DELIVER
    seq: int
    stored_at_ms: int
    sender: str
    envelope: bytes

    def encode_body(self) -> bytes:
        return _DELIVER.pack(self.seq, self.stored_at_ms) + _prefix(self.sender) + self.envelope

    @classmethod
    def decode_body(cls, body: bytes) -> Deliver:
        if len(body) < _DELIVER.size:
            raise RemoteProtocolError("delivery is truncated")
        seq, stored = _DELIVER.unpack_from(body)
        sender, env = _name_prefixed(body[_DELIVER.size :], "delivery")
        if not env:
            raise RemoteProtocolError("delivery has no envelope")
        return cls(seq, stored, sender, env)


ACK_OK = 1
ACK_REJECTED = 2
#: Kept, not taken: the client holds the message back (its sender's key changed, PROTOCOL 4.2); the row stays
#: for a later session, and this one may be sent the next page. Only to a server whose SERVER_HELLO said
#: `held_ack`.
ACK_HELD = 3
_ACK = struct.Struct(">QB32s64s")
DELIVERED_LABEL = b"securecomm/v1/delivered"
DELIVERED_LABEL_V2 = b"securecomm/v2/delivered"
#: A device id: the SHA-256 fingerprint of the device identity (docs/PROTOCOL.md 6.1).
DEVICE_ID_SIZE = 32


def delivered_transcript(msg_id: bytes, digest: bytes) -> bytes:
    """What a recipient signs to say it verified and received a message."""
    return DELIVERED_LABEL + msg_id + digest


def delivered_transcript_v2(msg_id: bytes, digest: bytes) -> bytes:
    """What a device signs for a version-2 message it received (docs/PROTOCOL.md 6.7)."""
    return DELIVERED_LABEL_V2 + msg_id + digest


@dataclass(frozen=True)
class Ack(Event):
    """The recipient took delivery `seq`: verified (digest + signed proof) or rejected."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: int
    status: int
    digest: bytes = bytes(32)
    signature: bytes = bytes(64)

    def encode_body(self) -> bytes:
        return _ACK.pack(self.seq, self.status, self.digest, self.signature)

    @classmethod
    def decode_body(cls, body: bytes) -> Ack:
        if len(body) != _ACK.size:
            raise RemoteProtocolError("ack has the wrong length")
        seq, status, digest, sig = _ACK.unpack(body)
        if status not in (ACK_OK, ACK_REJECTED, ACK_HELD):
            raise RemoteProtocolError("ack status is invalid")
        return cls(seq, status, digest, sig)


_DELIVERED = struct.Struct(">16s32s64s")


@dataclass(frozen=True)
class Delivered(Event):
    """Relayed to the sender: `by` verified message `msg_id`; the signature proves it."""

    TYPE: ClassVar[MsgType] = MsgType.DELIVERED
    msg_id: bytes
    digest: bytes
    signature: bytes
    by: str
    #: The receiving device (docs/PROTOCOL.md 6.7) for a version-2 message; None for version 1.
    device: bytes | None = None

    def encode_body(self) -> bytes:
        return _DELIVERED.pack(self.msg_id, self.digest, self.signature) + _prefix(self.by) + (self.device or b"")

    @classmethod
    def decode_body(cls, body: bytes) -> Delivered:
        if len(body) < _DELIVERED.size:
            raise RemoteProtocolError("delivery receipt is truncated")
        msg_id, digest, sig = _DELIVERED.unpack_from(body)
        by, rest = _name_prefixed(body[_DELIVERED.size :], "delivery receipt")
        if rest and len(rest) != DEVICE_ID_SIZE:
            raise RemoteProtocolError("delivery receipt has trailing bytes")
        return cls(msg_id, digest, sig, by, rest or None)


@dataclass(frozen=True)
class RoomSend(Event):
    """A room message encrypted once with the sender key; relayed as is to every member."""

    TYPE: ClassVar[MsgType] = MsgType.ROOM_SEND
    room: str
    payload: bytes

    def encode_body(self) -> bytes:
        return _prefix(self.room) + self.payload

    @classmethod
    def decode_body(cls, body: bytes) -> RoomSend:
        room, payload = _name_prefixed(body, "room message")
        if len(payload) < 16:
            raise RemoteProtocolError("room message is truncated")
        return cls(room, payload)


@dataclass(frozen=True)
class RoomMessage(Event):
    TYPE: ClassVar[MsgType] = MsgType.ROOM_MESSAGE
    room: str
    sender: str
    payload: bytes

    def encode_body(self) -> bytes:
        return _prefix(self.room) + _prefix(self.sender) + self.payload

    @classmethod
    def decode_body(cls, body: bytes) -> RoomMessage:
        room, rest = _name_prefixed(body, "room message")
        sender, payload = _name_prefixed(rest, "room message")
        return cls(room, sender, payload)


@dataclass(frozen=True)
class RoomKey(Event):
    """A sender key sealed (HPKE envelope) to one member: c->s names the recipient, s->c the sender."""

    TYPE: ClassVar[MsgType] = MsgType.ROOM_KEY
    user: str
    envelope: bytes

    def encode_body(self) -> bytes:
        return _prefix(self.user) + self.envelope

    @classmethod
    def decode_body(cls, body: bytes) -> RoomKey:
        user, env = _name_prefixed(body, "room key")
        if not env:
            raise RemoteProtocolError("room key has no envelope")
        return cls(user, env)


@dataclass(frozen=True)
class RoomEvent(Event):
    """Membership changes: {room, event: joined|left, user, identity}."""

    TYPE: ClassVar[MsgType] = MsgType.ROOM_EVENT
    room: str
    event: str
    user: str
    identity: str | None = None

    def encode_body(self) -> bytes:
        return _dump({"room": self.room, "event": self.event, "user": self.user, "identity": self.identity})

    @classmethod
    def decode_body(cls, body: bytes) -> RoomEvent:
        o = _load_json(body)
        # Any other event is passed on, not a protocol error: a client ignores what it does not know
        # (PROTOCOL.md 3.4), so a newer server, or a hostile one, cannot end its session with it.
        event = _field(o, "event", str)
        return cls(_field(o, "room", str), event, _field(o, "user", str), _field(o, "identity", str, optional=True))




#: Longest user name (PROTOCOL.md 5.1: 1-32 characters). The server adds the
#: sender's name when it relays DIRECT, ROOM_SEND and ROOM_KEY, so a frame that
#: fits the limit on the way in can outgrow it on the way out; both sides judge
#: these frames by the size they would have relayed with a name this long.
MAX_NAME = 32


def relayed_size(event: Event) -> int | None:
    """Payload bytes of the frame the server would relay for `event` from a sender with the longest
    possible name, or None if the server relays nothing for it (PROTOCOL.md 3.7)."""
    sender = 1 + MAX_NAME
    if isinstance(event, Direct):  # -> DELIVER: seq, stored_at, sender, envelope
        return 1 + _DELIVER.size + sender + len(event.envelope)
    if isinstance(event, RoomSend):  # -> ROOM_MESSAGE: room, sender, payload
        return 1 + len(_prefix(event.room)) + sender + len(event.payload)
    if isinstance(event, RoomKey):  # -> ROOM_KEY: sender, envelope
        return 1 + sender + len(event.envelope)
    return None
