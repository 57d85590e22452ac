"""Version-2 additions to the wire (docs/PROTOCOL.md 5.3, 6.7): pure round trips and refusals."""

from __future__ import annotations

import pytest

from securecomm.errors import RemoteProtocolError
from securecomm.wire import protocol as P


def _rt(event: P.Event) -> P.Event:
    return P.decode_payload(bytes([event.TYPE]) + event.encode_body())


def test_login_ok_names_the_device_and_pending():
    ok = P.LoginOk("alice", "user", "SHA256:x", 7, "ab" * 32, False)
    assert _rt(ok) == ok
    pending = P.LoginOk("alice", "user", None, 0, None, True)
    assert _rt(pending) == pending
    assert b'"pending":true' in pending.encode_body() and b'"device":null' in pending.encode_body()
    # a server that serves no devices sends none of the three; a version-1 reader's LOGIN_OK is unchanged
    assert P.LoginOk("a", "user").encode_body() == b'{"user":"a","role":"user","fingerprint":null}'
    with pytest.raises(RemoteProtocolError):
        P.decode_payload(bytes([P.MsgType.LOGIN_OK]) + b'{"user":"a","role":"user","fingerprint":null,'
                                                       b'"prekeys":1,"pending":"yes"}')


def test_delivered_names_the_receiving_device():
    d = P.Delivered(bytes(16), b"\xaa" * 32, b"\xbb" * 64, "bob", b"\xcc" * 32)
    assert _rt(d) == d
    assert d.encode_body().endswith(b"\x03bob" + b"\xcc" * 32)
    v1 = P.Delivered(bytes(16), b"\xaa" * 32, b"\xbb" * 64, "bob")
    assert _rt(v1) == v1 and v1.device is None
    with pytest.raises(RemoteProtocolError):  # anything but nothing or a 32-byte device id after `by`
        P.decode_payload(bytes([P.MsgType.DELIVERED]) + v1.encode_body() + b"\xcc" * 31)


@pytest.mark.parametrize("notice", [
    P.Notice("paired", "alice"),
    P.Notice("device_added", "alice", b"\x01" * 32, 2),
    P.Notice("device_removed", "alice", b"\x02" * 32, 3),
    P.Notice("prekeys_low", "alice", b"\x03" * 32),
])
def test_notice_round_trips(notice):
    payload = bytes([P.MsgType.NOTICE]) + notice.encode_body()
    assert payload[0] == 0x97 and P.decode_payload(payload) == notice
    assert notice.event in P.NOTICE_EVENTS


@pytest.mark.parametrize("body", [
    b'{"user":"alice"}',
    b'{"event":"paired"}',
    b'{"event":"paired","user":"alice","device":"00"}',
    b'{"event":"paired","user":"alice","device":"zz' + b"0" * 62 + b'"}',
    b'{"event":"device_added","user":"alice","counter":-1}',
    b'{"event":"device_added","user":"alice","counter":"2"}',
    b'{"event":"paired","user":"alice","event":"paired"}',
    b"[]",
])
def test_malformed_notices_are_refused(body):
    with pytest.raises(RemoteProtocolError):
        P.decode_payload(bytes([P.MsgType.NOTICE]) + body)


def test_a_client_accepts_a_notice_only_once_logged_in():
    from securecomm.errors import ProtocolError

    client = P.Connection("client")
    client.send(P.Hello())
    frame = P.encode_event(P.Notice("paired", "alice"))
    client.receive_data(frame)
    with pytest.raises(ProtocolError):
        client.next_event()  # before SERVER_HELLO and LOGIN_OK: not allowed
