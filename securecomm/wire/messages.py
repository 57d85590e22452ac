"""Protocol constants, error codes and the core messages (hello, login, send, receipt, requests).

Control messages carry a JSON object; SEND and RECEIPT are binary so that no
JSON or base64 touches an envelope on the per-message path. See
docs/PROTOCOL.md section 3 for the byte layouts.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

# The protocol errors live in errors.py under one root, as h11's do, and are re-exported here for
# wire users: ProtocolError catches both; RemoteProtocolError is what the peer did (with the ERROR
# code to answer, BAD_FRAME unless said); LocalProtocolError is this side's misuse of the API.
from securecomm.errors import LocalProtocolError as LocalProtocolError
from securecomm.errors import ProtocolError as ProtocolError
from securecomm.errors import RemoteProtocolError
from securecomm.wire.frames import MAX_FRAME_SIZE

PROTOCOL_VERSION = 1
#: Protocol versions this wire layer understands (a HELLO must share one). Version 2 is devices and
#: forward secrecy (docs/PROTOCOL.md 6.7); which ones a server serves is securecomm/server/versions.py.
SUPPORTED_VERSIONS = (1, 2)
#: What this project's client offers in its HELLO: 2 only (devices, prekeys, forward secrecy). It
#: offered 1 as well while servers were moved to 2; no securecomm server serves 1 any more, and the offer
#: let a hostile server (or anyone holding its certificate) answer 1 and have the client seal to keys it
#: handed out and accept messages it forged (the attacker's check). Tests and benchmarks that need a
#: version-1 baseline set Client.versions = (1,).
CLIENT_VERSIONS = (2,)
CHALLENGE_SIZE = 32
LOGIN_LABEL = b"securecomm/v1/login"
#: Registering a device key at a password login signs the same structure as a
#: key login under this label, so neither signature can stand in for the other.
REGISTER_LABEL = b"securecomm/v1/register"


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
    MAILBOX_FULL = 18  # a direct message would take its recipient's mailbox over a limit
    KEY_REPLACE = 19  # the account has another device key; resend with replace_key to replace it
    STORAGE_FULL = 20  # a SEND would take the sender's stored messages to the server over a limit
    EXPIRED = 21  # a DIRECT waited longer than --mailbox-ttl and was dropped unread (pushed to its sender)
    UNAVAILABLE = 22  # the relay's database is unreachable: nothing was stored; retry shortly
    PREKEY = 23  # a prekey upload refused: bad signature, replayed id, over a limit (docs/PROTOCOL.md 6.10)
    DEVICE_LIST = 24  # a device list or certificate refused: not the user key, bad signature, stale counter
    PAIRING = 25  # a pairing code unknown, expired or used, or not approved yet
    DEVICE_REMOVED = 26  # this device was removed from its user's list: its sessions end


#: The only text the server sends with these codes (docs/PROTOCOL.md 5.5.1), and the text the client
#: shows for them whatever a server sent. Their causes come from our parsers and crypto: the exception
#: text would tell a prober which check failed (as pyca's one opaque InvalidToken avoids); the server
#: logs the detail instead.
OPAQUE_TEXTS: dict[int, str] = {
    ErrorCode.BAD_FRAME: "malformed frame or message",
    ErrorCode.UNKNOWN_TYPE: "unknown message type or request",
    ErrorCode.BAD_STATE: "message not allowed in this state of the connection",
    ErrorCode.VERSION: "no common protocol version",
    ErrorCode.INTEGRITY: ("message rejected: it failed the server's integrity checks (format, signature, proof of "
                          "possession or decryption)"),
}


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
    FILE_PUT = 0x15  # files through the server (docs/PROTOCOL.md 4.4)
    REQUEST = 0x20
    SERVER_HELLO = 0x81
    LOGIN_OK = 0x82
    PONG = 0x8E
    RECEIPT = 0x90
    DELIVER = 0x91
    DELIVERED = 0x92
    ROOM_EVENT = 0x93
    ROOM_MESSAGE = 0x94
    FILE_ACK = 0x95
    FILE_DATA = 0x96
    NOTICE = 0x97  # devices (docs/PROTOCOL.md 6.7)
    RESULT = 0xA0
    ERROR = 0xFF


# -- JSON helpers ---------------------------------------------------------------
def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice is an error, not "the last one wins": two parsers must never disagree."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested deep
        raise RemoteProtocolError("control message is not valid UTF-8 JSON") from e
    if not isinstance(obj, dict):
        raise RemoteProtocolError("control message is not a JSON object")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RemoteProtocolError(f"field {name!r} is missing or has the wrong type")
    return value


def _nullable(obj: dict[str, Any], name: str, kind: type) -> Any:
    """A key that must be present but may be JSON null (absent and null are not the same)."""
    if name not in obj:
        raise RemoteProtocolError(f"field {name!r} is missing")
    return None if obj[name] is None else _field(obj, name, kind)


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if v is not None}, separators=(",", ":")).encode()


def _hex(obj: dict[str, Any], name: str, size: int | None = None, *, optional: bool = False) -> bytes | None:
    value = _field(obj, name, str, optional=optional)
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise RemoteProtocolError(f"field {name!r} is not hex") from e
    if size is not None and len(raw) != size:
        raise RemoteProtocolError(f"field {name!r} has the wrong length")
    return raw


# -- events -----------------------------------------------------------------------
class Event:
    TYPE: ClassVar[MsgType]

    def encode_body(self) -> bytes:
        raise NotImplementedError

    def encode_parts(self) -> tuple[bytes, ...]:
        """The body as pieces that encode_event joins with the frame header in one copy (a file chunk's
        256 KiB of data is not copied into a body first)."""
        return (self.encode_body(),)

    @classmethod
    def decode_body(cls, body: bytes) -> Event:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Event):
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    versions: tuple[int, ...] = CLIENT_VERSIONS
    client: str = "securecomm"

    def encode_body(self) -> bytes:
        return _dump({"versions": list(self.versions), "client": self.client})

    @classmethod
    def decode_body(cls, body: bytes) -> Hello:
        o = _load_json(body)
        versions = _field(o, "versions", list)
        if not versions or len(versions) > 16 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in versions):
            raise RemoteProtocolError("field 'versions' must be a short list of integers")
        return cls(tuple(versions), _field(o, "client", str)[:64])


@dataclass(frozen=True)
class ServerHello(Event):
    TYPE: ClassVar[MsgType] = MsgType.SERVER_HELLO
    version: int
    identity: str
    challenge: bytes
    max_frame: int = MAX_FRAME_SIZE
    server: str = "securecomm"
    #: The server's --idle-timeout in whole seconds (optional; PROTOCOL.md 3.7): a waiting client PINGs
    #: well within it. None: not announced (a server before it); the client then assumes 300.
    idle_timeout: int | None = None
    #: How long the server keeps undelivered mail, in whole seconds, 0 for ever (optional; PROTOCOL.md 6.5):
    #: a device keeps a one-time prekey handed out and never used at least this long. None: not announced.
    mailbox_ttl: int | None = None
    #: The server takes ACK status 3, "held" (optional; PROTOCOL.md 4.2). None: not announced.
    held_ack: bool | None = None

    def encode_body(self) -> bytes:
        body: dict[str, Any] = {"version": self.version, "identity": self.identity,
                                "challenge": self.challenge.hex(), "max_frame": self.max_frame, "server": self.server}
        if self.idle_timeout is not None:
            body["idle_timeout"] = self.idle_timeout
        if self.mailbox_ttl is not None:
            body["mailbox_ttl"] = self.mailbox_ttl
        if self.held_ack is not None:
            body["held_ack"] = self.held_ack
        return _dump(body)

    @classmethod
    def decode_body(cls, body: bytes) -> ServerHello:
        o = _load_json(body)
        challenge = _hex(o, "challenge", CHALLENGE_SIZE)
        assert challenge is not None
        return cls(_field(o, "version", int), _field(o, "identity", str), challenge,
                   _field(o, "max_frame", int), _field(o, "server", str),
                   _field(o, "idle_timeout", int, optional=True), _field(o, "mailbox_ttl", int, optional=True),
                   _field(o, "held_ack", bool, optional=True))


@dataclass(frozen=True)
class LoginPassword(Event):
    TYPE: ClassVar[MsgType] = MsgType.LOGIN_PASSWORD
    user: str
    password: str = field(repr=False)
    identity: str | None = None  # register this device's public identity
    proof: bytes | None = None  # Ed25519 signature of register_transcript() by that identity
    replace_key: bool = False  # replace a different key already registered to the account

    def encode_body(self) -> bytes:
        return _dump({"user": self.user, "password": self.password, "identity": self.identity,
                      "proof": self.proof.hex() if self.proof else None, "replace_key": self.replace_key or None})

    @classmethod
    def decode_body(cls, body: bytes) -> LoginPassword:
        o = _load_json(body)
        return cls(_field(o, "user", str), _field(o, "password", str), _field(o, "identity", str, optional=True),
                   _hex(o, "proof", 64, optional=True), bool(_field(o, "replace_key", bool, optional=True)))


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


def register_transcript(challenge: bytes, server_fingerprint: bytes, user: str) -> bytes:
    """What a device signs to prove it holds the key it registers at a password login."""
    name = user.encode()
    return REGISTER_LABEL + challenge + server_fingerprint + struct.pack(">B", len(name)) + name


@dataclass(frozen=True)
class LoginOk(Event):
    TYPE: ClassVar[MsgType] = MsgType.LOGIN_OK
    user: str
    role: str
    fingerprint: str | None = None
    #: One-time prekeys the server holds for the session's device (docs/PROTOCOL.md 6.7); None from a
    #: server that does not serve devices, which is how a client knows not to set one up.
    prekeys: int | None = None
    #: The session's device id in hex (docs/PROTOCOL.md 6.7), None for a session that is no listed device.
    device: str | None = None
    #: A new device of an account that has a user key, waiting to be paired: only pair_start,
    #: pair_complete, PING and BYE are served (6.4). Sent (with `device`) by a server that serves devices.
    pending: bool = False

    def encode_body(self) -> bytes:
        # fingerprint is always present: JSON null says "no key registered" (docs/PROTOCOL.md 3.3)
        body: dict[str, Any] = {"user": self.user, "role": self.role, "fingerprint": self.fingerprint}
        if self.prekeys is not None:
            body.update(prekeys=self.prekeys, device=self.device, pending=self.pending)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode_body(cls, body: bytes) -> LoginOk:
        o = _load_json(body)
        pending = o.get("pending", False)
        if not isinstance(pending, bool):
            raise RemoteProtocolError("field 'pending' is missing or has the wrong type")
        return cls(_field(o, "user", str), _field(o, "role", str), _nullable(o, "fingerprint", str),
                   _field(o, "prekeys", int, optional=True), _field(o, "device", str, optional=True), pending)


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
            raise RemoteProtocolError("empty envelope")
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
            raise RemoteProtocolError("receipt has the wrong length")
        msg_id, digest, stored, dup = _RECEIPT.unpack(body)
        if dup not in (0, 1):
            raise RemoteProtocolError("receipt flag is invalid")
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
        return cls(_field(o, "rid", int), _field(o, "op", str), _field(o, "args", dict))


#: NOTICE events (docs/PROTOCOL.md 6.7). `paired` and `prekeys_low` are for one device (the one named);
#: `device_added` and `device_removed` for every session of the account, naming the device and the counter.
NOTICE_EVENTS = ("paired", "device_added", "device_removed", "prekeys_low")
NOTICE_FOR_ONE_DEVICE = ("paired", "prekeys_low")


@dataclass(frozen=True)
class Notice(Event):
    """The server tells a session about its account's devices (s->c, version 2)."""

    TYPE: ClassVar[MsgType] = MsgType.NOTICE
    event: str
    user: str
    device: bytes | None = None
    counter: int | None = None

    def encode_body(self) -> bytes:
        return _dump({"event": self.event, "user": self.user,
                       "device": None if self.device is None else self.device.hex(), "counter": self.counter})

    @classmethod
    def decode_body(cls, body: bytes) -> Notice:
        o = _load_json(body)
        counter = _field(o, "counter", int, optional=True)
        if counter is not None and counter < 0:
            raise RemoteProtocolError("field 'counter' is out of range")
        # an event this reader does not know is kept (a newer server): the client ignores it
        return cls(_field(o, "event", str), _field(o, "user", str), _hex(o, "device", 32, optional=True), counter)


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
        if "data" not in o:
            raise RemoteProtocolError("field 'data' is missing")
        return cls(_field(o, "rid", int), o["data"])


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
        return cls(_field(o, "code", int), str(_field(o, "message", str))[:500], _field(o, "fatal", bool),
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


