"""Message types, their encodings, error codes and the connection state machine.

Theory of operation
-------------------
A connection is TLS 1.3; inside it both sides exchange frames (frames.py)
whose first payload byte is the message type. Control messages carry a JSON
object (rare, small, easy to extend); the per-message hot path (SEND,
RECEIPT, DIRECT, DELIVER) is binary so that no JSON or base64 touches an
envelope.

    client                                   server
      HELLO {versions}            ──────►
                                  ◄──────    SERVER_HELLO {version, identity, challenge, max_frame}
      LOGIN_PASSWORD | LOGIN_KEY  ──────►
                                  ◄──────    LOGIN_OK {user, role}   (or ERROR, fatal)
      SEND envelope  ─┐ pipelined ──────►
      SEND envelope  ─┘           ◄──────    RECEIPT msg_id sha256 stored_at   (after the commit)
      REQUEST {rid, op}           ──────►
                                  ◄──────    RESULT {rid, ...}
      BYE                         ──────►    (either side closes)

State machine, the same for both roles, advanced by what is sent and received:

    AWAIT_HELLO --HELLO+SERVER_HELLO--> AWAIT_LOGIN --LOGIN_OK--> READY
         any fatal ERROR or BYE --> CLOSED

`Connection.next_event()` refuses a message whose type is unknown or not
allowed in the current state; all it ever raises is RemoteProtocolError
(with the protocol error code to answer with) — never another exception.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from securecomm.wire.frames import MAX_FRAME_SIZE, FrameDecoder, RemoteProtocolError, encode_frame

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
CHALLENGE_SIZE = 32
LOGIN_LABEL = b"securecomm/v1/login"


class ErrorCode(IntEnum):
    """Protocol error codes; each maps to one client exception / exit code."""

    BAD_FRAME = 1
    UNKNOWN_TYPE = 2
    BAD_STATE = 3
    VERSION = 4
    AUTH_FAILED = 5
    FORBIDDEN = 6
    TOO_MANY_CLIENTS = 7
    RATE_LIMITED = 8
    STALE = 9
    WRONG_RECIPIENT = 10
    INTEGRITY = 11
    TOO_LARGE = 12
    NOT_FOUND = 13
    TIMEOUT = 14
    BUSY = 15
    INTERNAL = 16
    SHUTTING_DOWN = 17


class ProtocolError(RemoteProtocolError):
    """the peer broke the protocol"""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_FRAME) -> None:
        super().__init__(message)
        self.code = code


class MsgType(IntEnum):
    HELLO = 0x01
    LOGIN_PASSWORD = 0x02
    LOGIN_KEY = 0x03
    PING = 0x0E
    BYE = 0x0F
    SEND = 0x10
    DIRECT = 0x11
    ACK = 0x12
    ROOM_SEND = 0x13
    ROOM_KEY = 0x14
    REQUEST = 0x20
    SERVER_HELLO = 0x81
    LOGIN_OK = 0x82
    PONG = 0x8E
    RECEIPT = 0x90
    DELIVER = 0x91
    DELIVERED = 0x92
    ROOM_EVENT = 0x93
    ROOM_MESSAGE = 0x94
    RESULT = 0xA0
    ERROR = 0xFF


# -- JSON helpers ---------------------------------------------------------------
def _load_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("control message is not valid UTF-8 JSON") from e
    if not isinstance(obj, dict):
        raise ProtocolError("control message is not a JSON object")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"field {name!r} is missing or has the wrong type")
    return value


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if v is not None}, separators=(",", ":")).encode()


def _hex(obj: dict[str, Any], name: str, size: int | None = None, *, optional: bool = False) -> bytes | None:
    value = _field(obj, name, str, optional=optional)
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise ProtocolError(f"field {name!r} is not hex") from e
    if size is not None and len(raw) != size:
        raise ProtocolError(f"field {name!r} has the wrong length")
    return raw


# -- events -----------------------------------------------------------------------
class Event:
    TYPE: ClassVar[MsgType]

    def encode_body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes) -> Event:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Event):
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    client: str = "securecomm"

    def encode_body(self) -> bytes:
        return _dump({"versions": list(self.versions), "client": self.client})

    @classmethod
    def decode_body(cls, body: bytes) -> Hello:
        o = _load_json(body)
        versions = _field(o, "versions", list)
        if not versions or len(versions) > 16 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in versions):
            raise ProtocolError("field 'versions' must be a short list of integers")
        return cls(tuple(versions), str(_field(o, "client", str, optional=True) or "")[:64])


@dataclass(frozen=True)
class ServerHello(Event):
    TYPE: ClassVar[MsgType] = MsgType.SERVER_HELLO
    version: int
    identity: str
    challenge: bytes
    max_frame: int = MAX_FRAME_SIZE
    server: str = "securecomm"

    def encode_body(self) -> bytes:
        return _dump({"version": self.version, "identity": self.identity, "challenge": self.challenge.hex(),
                      "max_frame": self.max_frame, "server": self.server})

    @classmethod
    def decode_body(cls, body: bytes) -> ServerHello:
        o = _load_json(body)
        challenge = _hex(o, "challenge", CHALLENGE_SIZE)
        assert challenge is not None
        return cls(_field(o, "version", int), _field(o, "identity", str), challenge,
                   _field(o, "max_frame", int), str(_field(o, "server", str, optional=True) or ""))


@dataclass(frozen=True)
class LoginPassword(Event):
    TYPE: ClassVar[MsgType] = MsgType.LOGIN_PASSWORD
    user: str
    password: str = field(repr=False)
    identity: str | None = None  # register this device's public identity

    def encode_body(self) -> bytes:
        return _dump({"user": self.user, "password": self.password, "identity": self.identity})

    @classmethod
    def decode_body(cls, body: bytes) -> LoginPassword:
        o = _load_json(body)
        return cls(_field(o, "user", str), _field(o, "password", str), _field(o, "identity", str, optional=True))


@dataclass(frozen=True)
class LoginKey(Event):
    TYPE: ClassVar[MsgType] = MsgType.LOGIN_KEY
    user: str
    signature: bytes

    def encode_body(self) -> bytes:
        return _dump({"user": self.user, "signature": self.signature.hex()})

    @classmethod
    def decode_body(cls, body: bytes) -> LoginKey:
        o = _load_json(body)
        sig = _hex(o, "signature", 64)
        assert sig is not None
        return cls(_field(o, "user", str), sig)


def login_transcript(challenge: bytes, server_fingerprint: bytes, user: str) -> bytes:
    """What an identity-key login signs: fresh per connection, bound to the server."""
    name = user.encode()
    return LOGIN_LABEL + challenge + server_fingerprint + struct.pack(">B", len(name)) + name


@dataclass(frozen=True)
class LoginOk(Event):
    TYPE: ClassVar[MsgType] = MsgType.LOGIN_OK
    user: str
    role: str
    fingerprint: str | None = None

    def encode_body(self) -> bytes:
        return _dump({"user": self.user, "role": self.role, "fingerprint": self.fingerprint})

    @classmethod
    def decode_body(cls, body: bytes) -> LoginOk:
        o = _load_json(body)
        return cls(_field(o, "user", str), _field(o, "role", str), _field(o, "fingerprint", str, optional=True))


@dataclass(frozen=True)
class Send(Event):
    """An envelope sealed to the server's identity (the original `send` path)."""

    TYPE: ClassVar[MsgType] = MsgType.SEND
    envelope: bytes

    def encode_body(self) -> bytes:
        return self.envelope

    @classmethod
    def decode_body(cls, body: bytes) -> Send:
        if not body:
            raise ProtocolError("empty envelope")
        return cls(body)


_RECEIPT = struct.Struct(">16s32sQB")


@dataclass(frozen=True)
class Receipt(Event):
    """The server stored the message: echoes its id and the SHA-256 of its body."""

    TYPE: ClassVar[MsgType] = MsgType.RECEIPT
    msg_id: bytes
    sha256: bytes
    stored_at_ms: int
    duplicate: bool = False

    def encode_body(self) -> bytes:
        return _RECEIPT.pack(self.msg_id, self.sha256, self.stored_at_ms, int(self.duplicate))

    @classmethod
    def decode_body(cls, body: bytes) -> Receipt:
        if len(body) != _RECEIPT.size:
            raise ProtocolError("receipt has the wrong length")
        msg_id, digest, stored, dup = _RECEIPT.unpack(body)
        if dup not in (0, 1):
            raise ProtocolError("receipt flag is invalid")
        return cls(msg_id, digest, stored, bool(dup))


@dataclass(frozen=True)
class Request(Event):
    """A control request answered by RESULT with the same rid (e.g. op=user_list)."""

    TYPE: ClassVar[MsgType] = MsgType.REQUEST
    rid: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def encode_body(self) -> bytes:
        return _dump({"rid": self.rid, "op": self.op, "args": self.args})

    @classmethod
    def decode_body(cls, body: bytes) -> Request:
        o = _load_json(body)
        return cls(_field(o, "rid", int), _field(o, "op", str), _field(o, "args", dict, optional=True) or {})


@dataclass(frozen=True)
class Result(Event):
    TYPE: ClassVar[MsgType] = MsgType.RESULT
    rid: int
    data: Any

    def encode_body(self) -> bytes:
        return _dump({"rid": self.rid, "data": self.data})

    @classmethod
    def decode_body(cls, body: bytes) -> Result:
        o = _load_json(body)
        return cls(_field(o, "rid", int), o.get("data"))


@dataclass(frozen=True)
class Error(Event):
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: int
    message: str
    fatal: bool = False
    msg_id: bytes | None = None  # which SEND it answers, if any
    rid: int | None = None

    def encode_body(self) -> bytes:
        return _dump({"code": int(self.code), "message": self.message, "fatal": self.fatal,
                      "msg_id": self.msg_id.hex() if self.msg_id else None, "rid": self.rid})

    @classmethod
    def decode_body(cls, body: bytes) -> Error:
        o = _load_json(body)
        fatal = o.get("fatal", False)
        return cls(_field(o, "code", int), str(_field(o, "message", str))[:500], bool(fatal),
                   _hex(o, "msg_id", 16, optional=True), _field(o, "rid", int, optional=True))


@dataclass(frozen=True)
class Ping(Event):
    TYPE: ClassVar[MsgType] = MsgType.PING

    def encode_body(self) -> bytes:
        return b""

    @classmethod
    def decode_body(cls, body: bytes) -> Ping:
        return cls()


@dataclass(frozen=True)
class Pong(Ping):
    TYPE: ClassVar[MsgType] = MsgType.PONG


@dataclass(frozen=True)
class Bye(Ping):
    TYPE: ClassVar[MsgType] = MsgType.BYE


def _name_prefixed(body: bytes, what: str) -> tuple[str, bytes]:
    """`len u8 || name (ASCII) || rest`: how binary messages carry a user or room name."""
    if not body:
        raise ProtocolError(f"{what} is truncated")
    n = body[0]
    if n == 0 or len(body) < 1 + n:
        raise ProtocolError(f"{what} has a bad name length")
    try:
        name = body[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} name is not ASCII") from e
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
            raise ProtocolError("direct message has no envelope")
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
            raise ProtocolError("delivery is truncated")
        seq, stored = _DELIVER.unpack_from(body)
        sender, env = _name_prefixed(body[_DELIVER.size :], "delivery")
        if not env:
            raise ProtocolError("delivery has no envelope")
        return cls(seq, stored, sender, env)


ACK_OK = 1
ACK_REJECTED = 2
_ACK = struct.Struct(">QB32s64s")
DELIVERED_LABEL = b"securecomm/v1/delivered"


def delivered_transcript(msg_id: bytes, digest: bytes) -> bytes:
    """What a recipient signs to say it verified and received a message."""
    return DELIVERED_LABEL + msg_id + digest


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
            raise ProtocolError("ack has the wrong length")
        seq, status, digest, sig = _ACK.unpack(body)
        if status not in (ACK_OK, ACK_REJECTED):
            raise ProtocolError("ack status is invalid")
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

    def encode_body(self) -> bytes:
        return _DELIVERED.pack(self.msg_id, self.digest, self.signature) + _prefix(self.by)

    @classmethod
    def decode_body(cls, body: bytes) -> Delivered:
        if len(body) < _DELIVERED.size:
            raise ProtocolError("delivery receipt is truncated")
        msg_id, digest, sig = _DELIVERED.unpack_from(body)
        by, rest = _name_prefixed(body[_DELIVERED.size :], "delivery receipt")
        if rest:
            raise ProtocolError("delivery receipt has trailing bytes")
        return cls(msg_id, digest, sig, by)


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
            raise ProtocolError("room message is truncated")
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
            raise ProtocolError("room key has no envelope")
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
        event = _field(o, "event", str)
        if event not in ("joined", "left"):
            raise ProtocolError("room event is neither joined nor left")
        return cls(_field(o, "room", str), event, _field(o, "user", str), _field(o, "identity", str, optional=True))


EVENTS: dict[int, type[Event]] = {
    cls.TYPE: cls
    for cls in (Hello, ServerHello, LoginPassword, LoginKey, LoginOk, Send, Receipt, Request, Result, Error, Ping,
                Pong, Bye, Direct, Deliver, Ack, Delivered, RoomSend, RoomMessage, RoomKey, RoomEvent)
}


def decode_payload(payload: bytes) -> Event:
    cls = EVENTS.get(payload[0])
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{payload[0]:02x}", ErrorCode.UNKNOWN_TYPE)
    try:
        return cls.decode_body(payload[1:])
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, struct.error) as e:  # belt and braces: parsers raise ProtocolError
        raise ProtocolError(f"malformed {cls.__name__} message") from e


def encode_event(event: Event, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    return encode_frame(bytes([event.TYPE]) + event.encode_body(), max_frame)


# -- state machine ----------------------------------------------------------------
class State(IntEnum):
    AWAIT_HELLO = 1
    AWAIT_LOGIN = 2
    READY = 3
    CLOSED = 4


# What a SERVER may receive in each state (the client's sending rules are the same table).
CLIENT_MESSAGES: dict[State, frozenset[MsgType]] = {
    State.AWAIT_HELLO: frozenset({MsgType.HELLO}),
    State.AWAIT_LOGIN: frozenset({MsgType.LOGIN_PASSWORD, MsgType.LOGIN_KEY, MsgType.PING, MsgType.BYE}),
    State.READY: frozenset({MsgType.SEND, MsgType.DIRECT, MsgType.ACK, MsgType.ROOM_SEND, MsgType.ROOM_KEY,
                            MsgType.REQUEST, MsgType.PING, MsgType.BYE}),
    State.CLOSED: frozenset(),
}
# What a CLIENT may receive in each state (ERROR is allowed everywhere but CLOSED).
SERVER_MESSAGES: dict[State, frozenset[MsgType]] = {
    State.AWAIT_HELLO: frozenset({MsgType.SERVER_HELLO, MsgType.ERROR}),
    State.AWAIT_LOGIN: frozenset({MsgType.LOGIN_OK, MsgType.PONG, MsgType.ERROR}),
    State.READY: frozenset({MsgType.RECEIPT, MsgType.DELIVER, MsgType.DELIVERED, MsgType.ROOM_MESSAGE,
                            MsgType.ROOM_KEY, MsgType.ROOM_EVENT, MsgType.RESULT, MsgType.PONG, MsgType.ERROR}),
    State.CLOSED: frozenset(),
}
_TRANSITIONS: dict[tuple[State, MsgType], State] = {
    (State.AWAIT_HELLO, MsgType.SERVER_HELLO): State.AWAIT_LOGIN,
    (State.AWAIT_LOGIN, MsgType.LOGIN_OK): State.READY,
}


class Connection:
    """One side of a connection: frames in and out, state checked both ways."""

    def __init__(self, role: str, max_frame: int = MAX_FRAME_SIZE) -> None:
        if role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        self.role = role
        self.state = State.AWAIT_HELLO
        self.max_frame = max_frame
        self.decoder = FrameDecoder(max_frame)
        self._incoming = CLIENT_MESSAGES if role == "server" else SERVER_MESSAGES
        self._outgoing = SERVER_MESSAGES if role == "server" else CLIENT_MESSAGES

    def receive_data(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
        except RemoteProtocolError as e:
            raise ProtocolError(str(e), ErrorCode.TOO_LARGE) from e

    def next_event(self) -> Event | None:
        if self.state is State.CLOSED:
            return None
        try:
            payload = self.decoder.next_frame()
        except RemoteProtocolError as e:
            raise ProtocolError(str(e), ErrorCode.TOO_LARGE) from e
        if payload is None:
            return None
        event = decode_payload(payload)
        if event.TYPE not in self._incoming[self.state]:
            raise ProtocolError(f"{event.TYPE.name} is not allowed in state {self.state.name}", ErrorCode.BAD_STATE)
        self._advance(event)
        return event

    def send(self, event: Event) -> bytes:
        if event.TYPE not in self._outgoing[self.state]:
            raise ProtocolError(f"cannot send {event.TYPE.name} in state {self.state.name}", ErrorCode.BAD_STATE)
        data = encode_event(event, self.max_frame)
        self._advance(event)
        return data

    def _advance(self, event: Event) -> None:
        if isinstance(event, Bye) or (isinstance(event, Error) and event.fatal):
            self.state = State.CLOSED
            return
        if isinstance(event, Hello):
            if not set(event.versions) & set(SUPPORTED_VERSIONS):
                raise ProtocolError(f"no common protocol version (peer offers {list(event.versions)})",
                                    ErrorCode.VERSION)
            return
        self.state = _TRANSITIONS.get((self.state, event.TYPE), self.state)
