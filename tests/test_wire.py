"""The sans-I/O protocol: frames, messages, state machine — no sockets at all."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securecomm.errors import FrameTooLarge, OversizedError, RemoteProtocolError
from securecomm.wire import protocol as P
from securecomm.wire.frames import (
    MAX_FRAME_SIZE,
    PRELOGIN_MAX_FRAME,
    FrameDecoder,
    encode_frame,
)

HELLO = P.ServerHello(1, "securecomm:1:x", b"\x07" * 32, 4096)


def test_frames_byte_at_a_time():
    frames = [b"\x01abc", b"\x02" * 1000, b"\x03"]
    stream = b"".join(encode_frame(f) for f in frames)
    dec, out = FrameDecoder(), []
    for i in range(len(stream)):
        dec.receive_data(stream[i : i + 1])
        while (f := dec.next_frame()) is not None:
            out.append(f)
    assert out == frames
    assert not dec.partial


def test_frame_over_limit_is_refused_before_buffering():
    dec = FrameDecoder(max_frame=100)
    with pytest.raises(FrameTooLarge):
        dec.receive_data(struct.pack(">I", 101))
    with pytest.raises(OversizedError):
        encode_frame(b"x" * 101, max_frame=100)


def test_empty_frame_is_an_error():
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().receive_data(struct.pack(">I", 0))


def test_empty_frame_is_bad_frame_not_too_large():
    s = P.Connection("server")
    with pytest.raises(P.ProtocolError) as e:
        s.receive_data(struct.pack(">I", 0))
    assert e.value.code == P.ErrorCode.BAD_FRAME
    s = P.Connection("server")
    with pytest.raises(P.ProtocolError) as e:
        s.receive_data(struct.pack(">I", P.MAX_FRAME_SIZE + 1))
    assert e.value.code == P.ErrorCode.TOO_LARGE


@pytest.mark.parametrize("type_, body", [
    (P.MsgType.HELLO, b'{"versions":[1]}'),  # no "client"
    (P.MsgType.REQUEST, b'{"rid":1,"op":"who"}'),  # no "args"
    (P.MsgType.LOGIN_OK, b'{"user":"a","role":"user"}'),  # "fingerprint" must be present (null if none)
    (P.MsgType.ERROR, b'{"code":5,"message":"x"}'),  # no "fatal"
    (P.MsgType.RESULT, b'{"rid":1}'),  # no "data"
    (P.MsgType.SERVER_HELLO, b'{"version":1,"identity":"x","challenge":"' + b"00" * 32 + b'","max_frame":4096}'),
])
def test_missing_keys_are_protocol_errors(type_, body):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_payload(bytes([type_]) + body)
    assert e.value.code == P.ErrorCode.BAD_FRAME


def test_login_ok_without_key_says_null():
    assert P.LoginOk("alice", "user").encode_body() == b'{"user":"alice","role":"user","fingerprint":null}'
    assert P.decode_payload(bytes([P.MsgType.LOGIN_OK]) + P.LoginOk("a", "user").encode_body()).fingerprint is None


@pytest.mark.parametrize("event", [
    P.Hello(), HELLO, P.LoginPassword("alice", "pw", None), P.LoginKey("bob", b"s" * 64),
    P.LoginOk("alice", "admin", "SHA256:x"), P.Send(b"envelope"), P.Receipt(b"i" * 16, b"d" * 32, 123, True),
    P.Request(7, "user_list", {}), P.Result(7, [{"a": 1}]), P.Error(5, "nope", True, b"m" * 16, 3),
    P.Ping(), P.Pong(), P.Bye(),
])
def test_every_message_round_trips(event):
    payload = encode_frame(bytes([event.TYPE]) + event.encode_body())[4:]
    assert P.decode_payload(payload) == event


def test_password_is_not_in_repr():
    assert "hunter2" not in repr(P.LoginPassword("alice", "hunter2"))


def pair():
    return P.Connection("client"), P.Connection("server")


def deliver(src, dst, event):
    dst.receive_data(src.send(event))
    return dst.next_event()


def test_client_and_server_back_to_back():
    c, s = pair()
    assert isinstance(deliver(c, s, P.Hello()), P.Hello)
    assert isinstance(deliver(s, c, HELLO), P.ServerHello)
    assert c.state is s.state is P.State.AWAIT_LOGIN
    deliver(c, s, P.LoginKey("alice", b"s" * 64))
    deliver(s, c, P.LoginOk("alice", "user"))
    assert c.state is s.state is P.State.READY
    assert isinstance(deliver(c, s, P.Send(b"x")), P.Send)
    assert isinstance(deliver(s, c, P.Receipt(b"i" * 16, b"d" * 32, 1)), P.Receipt)
    deliver(c, s, P.Bye())
    assert s.state is P.State.CLOSED and c.state is P.State.CLOSED


def test_message_before_login_is_bad_state():
    c, s = pair()
    deliver(c, s, P.Hello())
    deliver(s, c, HELLO)
    s.receive_data(P.encode_event(P.Send(b"x")))
    with pytest.raises(P.ProtocolError) as e:
        s.next_event()
    assert e.value.code == P.ErrorCode.BAD_STATE


@pytest.mark.parametrize("kind", [P.MsgType.SERVER_HELLO, P.MsgType.LOGIN_OK, P.MsgType.RESULT,
                                  P.MsgType.HELLO, P.MsgType.LOGIN_KEY])
def test_type_not_allowed_now_is_bad_state_whatever_its_body(kind):
    """Found by an independent client: `{}` as a SERVER_HELLO in READY was BAD_FRAME (body parsed first)."""
    c, s = pair()
    deliver(c, s, P.Hello())
    deliver(s, c, HELLO)
    deliver(c, s, P.LoginKey("alice", b"s" * 64))
    s.send(P.LoginOk("alice", "user"))
    s.receive_data(struct.pack(">IB", 3, kind) + b"{}")
    with pytest.raises(P.ProtocolError) as e:
        s.next_event()
    assert e.value.code == P.ErrorCode.BAD_STATE


# -- issue 9: a stranger may not make us buffer a big frame before login ----------------
def test_big_frame_before_login_is_refused_from_its_header():
    s = P.Connection("server")
    with pytest.raises(P.ProtocolError) as e:
        s.receive_data(struct.pack(">I", PRELOGIN_MAX_FRAME + 1))  # the header alone is enough
    assert e.value.code == P.ErrorCode.TOO_LARGE
    assert s.decoder.buffered <= 4


def test_big_frame_after_hello_but_before_login_is_refused():
    c, s = pair()
    deliver(c, s, P.Hello())
    deliver(s, c, HELLO)
    with pytest.raises(P.ProtocolError) as e:
        s.receive_data(struct.pack(">I", 1024 * 1024) + b"\x10" + b"x" * 100)
    assert e.value.code == P.ErrorCode.TOO_LARGE


def test_login_fits_under_the_prelogin_cap():
    """The largest real pre-login frame: a password login registering an ML-KEM-768 identity."""
    from securecomm.crypto.identity import PrivateIdentity

    line = PrivateIdentity.generate().public.line
    login = P.encode_event(P.LoginPassword("a" * 32, "p" * 1024, line))
    assert len(login) < PRELOGIN_MAX_FRAME // 4
    c, s = pair()
    deliver(c, s, P.Hello())
    deliver(s, c, HELLO)
    assert isinstance(deliver(c, s, P.LoginPassword("a" * 32, "p" * 1024, line)), P.LoginPassword)


def test_full_size_frames_once_logged_in():
    c, s = P.Connection("client", MAX_FRAME_SIZE), P.Connection("server", MAX_FRAME_SIZE)
    deliver(c, s, P.Hello())
    deliver(s, c, P.ServerHello(1, "securecomm:1:x", b"\x07" * 32, MAX_FRAME_SIZE))
    deliver(c, s, P.LoginKey("alice", b"s" * 64))
    # LOGIN_OK and a big DELIVER in one read: the DELIVER is judged by the post-login limit
    big = P.Deliver(1, 2, "bob", b"e" * (MAX_FRAME_SIZE - 100))
    c.receive_data(s.send(P.LoginOk("alice", "user")) + s.send(big))
    assert isinstance(c.next_event(), P.LoginOk)
    assert c.next_event() == big
    assert isinstance(deliver(c, s, P.Send(b"e" * (MAX_FRAME_SIZE - 100))), P.Send)


def test_unknown_type():
    s = P.Connection("server")
    s.receive_data(encode_frame(b"\x55hello"))
    with pytest.raises(P.ProtocolError) as e:
        s.next_event()
    assert e.value.code == P.ErrorCode.UNKNOWN_TYPE


def test_no_common_version():
    s = P.Connection("server")
    s.receive_data(P.encode_event(P.Hello(versions=(99,))))
    with pytest.raises(P.ProtocolError) as e:
        s.next_event()
    assert e.value.code == P.ErrorCode.VERSION


def test_fatal_error_closes():
    c, s = pair()
    deliver(c, s, P.Hello())
    c.receive_data(s.send(P.Error(int(P.ErrorCode.TOO_MANY_CLIENTS), "full", fatal=True)))
    assert isinstance(c.next_event(), P.Error)
    assert c.state is P.State.CLOSED and s.state is P.State.CLOSED


@pytest.mark.parametrize("body", [b"[]", b"{", b'{"versions": "1"}', b'{"versions": [true]}', b"\xff\xfe",
                                  b'{"versions": []}', b"[" * 100_000, b'{"versions": [1], "client": ' + b"[" * 50_000])
def test_malformed_hello(body):
    s = P.Connection("server")
    with pytest.raises(P.ProtocolError):  # a 100 KB hello is now refused from its header (pre-login cap)
        s.receive_data(encode_frame(b"\x01" + body))
        s.next_event()


# h11's invariant: we either parse it or raise a protocol error, never anything else.
@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.sampled_from(["client", "server"]))
def test_fuzz_arbitrary_bytes(chunks, role):
    conn = P.Connection(role, max_frame=4096)
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while conn.next_event() is not None:
                pass
    except P.ProtocolError:
        pass


EVENTS = st.one_of(
    st.builds(P.Hello, versions=st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple)),
    st.builds(P.LoginPassword, user=st.text(max_size=40), password=st.text(max_size=40)),
    st.builds(P.LoginKey, user=st.text(max_size=40), signature=st.binary(min_size=64, max_size=64)),
    st.builds(P.Send, envelope=st.binary(min_size=1, max_size=200)),
    st.builds(P.Request, rid=st.integers(0, 2**31), op=st.text(max_size=20)),
    st.just(P.Ping()), st.just(P.Bye()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=10))
def test_fuzz_message_sequences(events):
    """Any sequence of well-formed client messages: accepted in order or refused with ProtocolError."""
    server = P.Connection("server")
    for ev in events:
        try:
            server.receive_data(P.encode_event(ev))
            got = server.next_event()
        except P.ProtocolError:
            return
        if got is None:
            assert server.state is P.State.CLOSED
            return
        assert got.TYPE == ev.TYPE
        if isinstance(got, P.Hello):
            server.send(HELLO)


def test_documented_json_frames_are_exactly_what_we_encode():
    """Every whole JSON frame example in docs/PROTOCOL.md 5.3: its length is right, it decodes,
    and our encoder writes those very bytes, so the examples cannot drift from the code."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    examples = re.findall(r"^    ((?:[0-9a-f]{2} ){3}[0-9a-f]{2}) \| ([0-9a-f]{2}) \| (\{.*\})$", doc, re.MULTILINE)
    assert len(examples) >= 10
    for length, type_hex, body in examples:
        payload = bytes.fromhex(type_hex) + body.encode()
        assert int(length.replace(" ", ""), 16) == len(payload), body
        assert P.encode_event(P.decode_payload(payload)) == struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("body", [b'{"versions":[1],"client":"a","client":"b"}', b'{"versions":[NaN],"client":"a"}',
                                  b'{"versions":[1],"client":"a","x":Infinity}'])
def test_duplicate_keys_and_non_json_constants_are_bad_frames(body):
    """Found by an independent client: a repeated key silently took the last value."""
    s = P.Connection("server")
    s.receive_data(struct.pack(">IB", len(body) + 1, P.MsgType.HELLO) + body)
    with pytest.raises(P.ProtocolError) as e:
        s.next_event()
    assert e.value.code == P.ErrorCode.BAD_FRAME
