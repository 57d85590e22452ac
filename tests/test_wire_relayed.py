"""Round trips and fuzzing for the eight relayed message types (wire/relayed.py); no sockets.

The h11 invariant, per type: a body either parses or raises our ProtocolError, never any other
exception. It is checked on `decode_body` itself, below `decode_payload`'s belt-and-braces
conversion, so a parser that leaks a struct.error or IndexError is caught here.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder
from securecomm.wire.relayed import (
    ACK_HELD,
    ACK_OK,
    ACK_REJECTED,
    Ack,
    Deliver,
    Delivered,
    Direct,
    RoomEvent,
    RoomKey,
    RoomMessage,
    RoomSend,
)

NAME = st.text(st.characters(max_codepoint=127), min_size=1, max_size=255)
U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=40)

RELAYED = {
    Direct: st.builds(Direct, to=NAME, envelope=st.binary(min_size=1, max_size=200)),
    Deliver: st.builds(Deliver, seq=U64, stored_at_ms=U64, sender=NAME, envelope=st.binary(min_size=1, max_size=200)),
    Ack: st.builds(Ack, seq=U64, status=st.sampled_from([ACK_OK, ACK_REJECTED, ACK_HELD]),
                   digest=st.binary(min_size=32, max_size=32), signature=st.binary(min_size=64, max_size=64)),
    Delivered: st.builds(Delivered, msg_id=st.binary(min_size=16, max_size=16),
                         digest=st.binary(min_size=32, max_size=32), signature=st.binary(min_size=64, max_size=64),
                         by=NAME),
    RoomSend: st.builds(RoomSend, room=NAME, payload=st.binary(min_size=16, max_size=200)),
    RoomMessage: st.builds(RoomMessage, room=NAME, sender=NAME, payload=st.binary(max_size=200)),
    RoomKey: st.builds(RoomKey, user=NAME, envelope=st.binary(min_size=1, max_size=200)),
    RoomEvent: st.builds(RoomEvent, room=TEXT, event=TEXT, user=TEXT, identity=st.none() | TEXT),
}
ANY_RELAYED = st.one_of(*RELAYED.values())


def test_all_eight_relayed_types_are_covered():
    """A ninth relayed type added to the registry without a strategy here fails this test."""
    relayed = {cls for cls in P.EVENTS.values() if cls.__module__ == "securecomm.wire.relayed"}
    assert relayed == set(RELAYED)
    assert len(relayed) == 8


def _payload(event: P.Event) -> bytes:
    return bytes([event.TYPE]) + event.encode_body()


@settings(max_examples=300, deadline=None)
@given(ANY_RELAYED)
def test_relayed_round_trip(event):
    assert P.decode_payload(_payload(event)) == event
    assert type(event).decode_body(event.encode_body()) == event


@settings(max_examples=100, deadline=None)
@given(ANY_RELAYED)
def test_relayed_round_trip_through_the_frame_layer(event):
    """Serialised as a frame and fed one byte at a time, each event comes back out equal."""
    stream, dec, out = P.encode_event(event), FrameDecoder(), []
    for i in range(len(stream)):
        dec.receive_data(stream[i : i + 1])
        while (frame := dec.next_frame()) is not None:
            out.append(P.decode_payload(frame))
    assert out == [event]


def _parses_or_protocol_error(cls: type[P.Event], body: bytes) -> None:
    with contextlib.suppress(P.RemoteProtocolError):
        cls.decode_body(body)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(RELAYED, key=lambda c: c.TYPE)), st.binary(max_size=300))
def test_relayed_arbitrary_bytes_parse_or_protocol_error(cls, body):
    _parses_or_protocol_error(cls, body)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


def _mutate(body: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(body)
    for kind, at, value in mutations:
        i = at % (len(data) + 1)
        if kind == "flip" and i < len(data):
            data[i] ^= value
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data.insert(i, value)
        elif kind == "delete" and i < len(data):
            del data[i]
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(ANY_RELAYED, st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_relayed_frames_parse_or_protocol_error(event, mutations):
    body = _mutate(event.encode_body(), mutations)
    _parses_or_protocol_error(type(event), body)
    with contextlib.suppress(P.RemoteProtocolError):
        P.decode_payload(bytes([event.TYPE]) + body)


@pytest.mark.parametrize("cls", sorted(RELAYED, key=lambda c: c.TYPE), ids=lambda c: c.__name__)
def test_empty_body_is_a_protocol_error(cls):
    with pytest.raises(P.RemoteProtocolError):
        cls.decode_body(b"")


@pytest.mark.parametrize("name", [b"bo\xff", b"b\xc3\xa9", b"\x80"])
def test_a_name_byte_of_0x80_or_more_is_a_framing_error(name):
    """PROTOCOL.md 5.1 as the spec-only client's check asked it to say: the shape (ASCII) is the
    framing's (BAD_FRAME, fatal); an ASCII name that fails the name rule is NOT_FOUND (the server's)."""
    for cls in (Direct, RoomKey):
        with pytest.raises(P.RemoteProtocolError, match="not ASCII"):
            cls.decode_body(bytes([len(name)]) + name + b"SCE2 envelope")
    assert Direct.decode_body(b"\x04bob\n" + b"x").to == "bob\n"  # the right shape: left to the name check
