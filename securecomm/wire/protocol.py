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
                                  ◄──────    LOGIN_OK {user, role, fingerprint}   (or ERROR, fatal)
      SEND envelope  ─┐ pipelined ──────►
      SEND envelope  ─┘           ◄──────    RECEIPT msg_id sha256 stored_at   (after the commit)
      REQUEST {rid, op}           ──────►
                                  ◄──────    RESULT {rid, ...}
      BYE                         ──────►    (either side closes)

In READY the server also pushes DELIVER, DELIVERED, ROOM_EVENT, ROOM_MESSAGE
and ROOM_KEY whenever something happens for the user, so they can arrive
between any request and its answer; answers are matched by msg_id / rid.

State machine, the same for both roles, advanced by what is sent and received:

    AWAIT_HELLO --HELLO+SERVER_HELLO--> AWAIT_LOGIN --LOGIN_OK--> READY
         any fatal ERROR or BYE --> CLOSED

Frames are capped at PRELOGIN_MAX_FRAME before READY and at max_frame from
READY on, so a peer that never logs in cannot make us buffer a large frame.

`Connection.next_event()` refuses a message whose type is unknown or not
allowed in the current state; all it ever raises is RemoteProtocolError
(with the protocol error code to answer with) — never another exception.
`Connection.send()` raises LocalProtocolError for a message this side may
not send now (our misuse, e.g. after a fatal ERROR): never the peer's fault.
Both derive from ProtocolError (errors.py), as in h11.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from securecomm.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from securecomm.wire.files import FileAck, FileData, FilePut
from securecomm.wire.frames import (
    MAX_FRAME_SIZE,
    PRELOGIN_MAX_FRAME,
    FrameDecoder,
    encode_frame_parts,
)
from securecomm.wire.messages import *  # noqa: F403 - the protocol's vocabulary, re-exported
from securecomm.wire.messages import (
    SUPPORTED_VERSIONS,
    Bye,
    Error,
    ErrorCode,
    Event,
    Hello,
    LoginKey,
    LoginOk,
    LoginPassword,
    MsgType,
    Notice,
    Ping,
    Pong,
    Receipt,
    Request,
    Result,
    Send,
    ServerHello,
)
from securecomm.wire.relayed import *  # noqa: F403
from securecomm.wire.relayed import Ack, Deliver, Delivered, Direct, RoomEvent, RoomKey, RoomMessage, RoomSend

EVENTS: dict[int, type[Event]] = {
    cls.TYPE: cls
    for cls in (Hello, ServerHello, LoginPassword, LoginKey, LoginOk, Send, Receipt, Request, Result, Error, Ping,
                Pong, Bye, Direct, Deliver, Ack, Delivered, RoomSend, RoomMessage, RoomKey, RoomEvent,
                FilePut, FileAck, FileData, Notice)
}


def decode_payload(payload: bytes) -> Event:
    cls = EVENTS.get(payload[0])
    if cls is None:
        raise RemoteProtocolError(f"unknown message type 0x{payload[0]:02x}", ErrorCode.UNKNOWN_TYPE)
    try:
        return cls.decode_body(payload[1:])
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, struct.error) as e:  # belt and braces
        raise RemoteProtocolError(f"malformed {cls.__name__} message") from e


def encode_event(event: Event, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    """The whole frame: length || type || body, the body's pieces copied once."""
    return encode_frame_parts((bytes([event.TYPE]), *event.encode_parts()), max_frame)


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
                            MsgType.REQUEST, MsgType.PING, MsgType.BYE, MsgType.FILE_PUT}),
    State.CLOSED: frozenset(),
}
# What a CLIENT may receive in each state (ERROR is allowed everywhere but CLOSED).
SERVER_MESSAGES: dict[State, frozenset[MsgType]] = {
    State.AWAIT_HELLO: frozenset({MsgType.SERVER_HELLO, MsgType.ERROR}),
    State.AWAIT_LOGIN: frozenset({MsgType.LOGIN_OK, MsgType.PONG, MsgType.ERROR}),
    State.READY: frozenset({MsgType.RECEIPT, MsgType.DELIVER, MsgType.DELIVERED, MsgType.ROOM_MESSAGE,
                            MsgType.ROOM_KEY, MsgType.ROOM_EVENT, MsgType.RESULT, MsgType.PONG, MsgType.ERROR,
                            MsgType.FILE_ACK, MsgType.FILE_DATA, MsgType.NOTICE}),
    State.CLOSED: frozenset(),
}
_TRANSITIONS: dict[tuple[State, MsgType], State] = {
    (State.AWAIT_HELLO, MsgType.SERVER_HELLO): State.AWAIT_LOGIN,
    (State.AWAIT_LOGIN, MsgType.LOGIN_OK): State.READY,
}


def _framing_error(e: RemoteProtocolError) -> RemoteProtocolError:
    """Only an over-long frame is TOO_LARGE; any other framing fault (an empty frame) is BAD_FRAME."""
    return RemoteProtocolError(str(e), ErrorCode.TOO_LARGE if isinstance(e, FrameTooLarge) else ErrorCode.BAD_FRAME)


class Connection:
    """One side of a connection: frames in and out, state checked both ways."""

    def __init__(self, role: str, max_frame: int = MAX_FRAME_SIZE) -> None:
        if role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        self.role = role
        self.state = State.AWAIT_HELLO
        self.max_frame = max_frame
        # Until LOGIN_OK only small frames are accepted (see PRELOGIN_MAX_FRAME);
        # _advance raises the limit to max_frame on entering READY.
        self.decoder = FrameDecoder(min(max_frame, PRELOGIN_MAX_FRAME))
        self._incoming = CLIENT_MESSAGES if role == "server" else SERVER_MESSAGES
        self._outgoing = SERVER_MESSAGES if role == "server" else CLIENT_MESSAGES
        #: Set by the server for a session limited within READY (a device waiting to be paired, PROTOCOL.md
        #: 6.4): other types are BAD_STATE on the type byte, as for the states themselves.
        self.only: frozenset[MsgType] | None = None

    def receive_data(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
        except RemoteProtocolError as e:
            raise _framing_error(e) from e

    def next_event(self) -> Event | None:
        if self.state is State.CLOSED:
            return None
        try:
            payload = self.decoder.next_frame()
        except RemoteProtocolError as e:
            raise _framing_error(e) from e
        if payload is None:
            return None
        # The state is checked on the type byte, before the body is parsed: a
        # type not allowed now is BAD_STATE whatever its body (PROTOCOL.md 3.4).
        cls = EVENTS.get(payload[0])
        if cls is not None and cls.TYPE not in self._incoming[self.state]:
            raise RemoteProtocolError(f"{cls.TYPE.name} is not allowed in state {self.state.name}", ErrorCode.BAD_STATE)
        if cls is not None and self.only is not None and cls.TYPE not in self.only:
            raise RemoteProtocolError(f"{cls.TYPE.name} is not allowed from a device waiting to be paired",
                                      ErrorCode.BAD_STATE)
        event = decode_payload(payload)
        self._advance(event)
        return event

    def send(self, event: Event) -> bytes:
        if event.TYPE not in self._outgoing[self.state]:
            # our own misuse, not the peer's: e.g. a reply after a fatal ERROR closed the connection
            raise LocalProtocolError(f"cannot send {event.TYPE.name} in state {self.state.name}", ErrorCode.BAD_STATE)
        data = encode_event(event, self.max_frame)
        self._advance(event)
        return data

    def _advance(self, event: Event) -> None:
        if isinstance(event, Bye) or (isinstance(event, Error) and event.fatal):
            self.state = State.CLOSED
            return
        if isinstance(event, Hello):
            if not set(event.versions) & set(SUPPORTED_VERSIONS):
                raise RemoteProtocolError(f"no common protocol version (peer offers {list(event.versions)})",
                                    ErrorCode.VERSION)
            return
        self.state = _TRANSITIONS.get((self.state, event.TYPE), self.state)
        if self.state is State.READY:
            self.decoder.max_frame = self.max_frame
