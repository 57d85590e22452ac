"""Several devices of one account online at once, one mailbox per device (docs/PROTOCOL.md 6.4, 6.7).

A real server (TLS, SQLite in a temporary --home). Alice's laptop makes her user key and list;
her phone (its own home and identity) logs in with the password, is a pending device (pairing
ops only), gets a code, the laptop approves it, the phone collects the user key and then logs
in with its own key while the laptop stays logged in. Bob fans one message out to both of
Alice's devices: each device gets its own copy once, an ACK on one leaves the other's, and the
DELIVERED receipt names the device. Removing the phone closes its session and refuses its key.

Regressions that fail on the code before this (main at a27e80a): the second copy of a fan-out
was answered as a duplicate and never stored (direct_ids was keyed by (sender, msg_id)); a
second device could not log in with its key (one registered key per account), and a new
device's password login registered its key in place of the first one's (KEY_REPLACE).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from securecomm.client import devicemail as M
from securecomm.client import devicesetup as S
from securecomm.client.pins import Pins
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from securecomm.store.devicekeys import DeviceKeys
from securecomm.wire import protocol as P
from tests.serverproc import ServerProc, add_user
from tests.test_error_table import Raw

KEM = "x25519"


def delivered_transcript_v2(msg_id: bytes, digest: bytes) -> bytes:
    """What a device signs for a version-2 message it received (PROTOCOL.md 6.7), written out here."""
    return b"securecomm/v2/delivered" + msg_id + digest


class Device:
    """One device: its own home (identity, device keys, pins) and a raw connection."""

    def __init__(self, srv: ServerProc, home: Path, user: str, name: str) -> None:
        self.srv, self.home, self.user, self.name = srv, home, user, name
        self.identity = PrivateIdentity.generate(KEM)
        self.keys = DeviceKeys(home / "device", KEM)
        self.pins = Pins.load(home / "pins.json")
        self.rid = 0
        self.conn: Raw | None = None
        self.ok: P.LoginOk | None = None

    @property
    def id(self) -> bytes:
        return self.identity.public.fingerprint

    def password(self) -> Device:
        self.conn = Raw(self.srv).start()
        self.conn.send(self.conn.registration(self.user, self.identity))
        ok = self.conn.until(P.LoginOk)
        assert isinstance(ok, P.LoginOk), ok
        self.ok = ok
        return self

    def key(self) -> Device:
        self.conn = Raw(self.srv).start()
        assert self.conn.hello is not None
        server_fp = self.conn.server_identity.fingerprint
        self.conn.send(P.LoginKey(self.user, self.identity.sign(
            P.login_transcript(self.conn.hello.challenge, server_fp, self.user))))
        ok = self.conn.until(P.LoginOk)
        assert isinstance(ok, P.LoginOk), ok
        self.ok = ok
        return self

    def call(self, op: str, **args: Any) -> Any:
        ev = self.ask(op, **args)
        assert isinstance(ev, P.Result), ev
        return ev.data

    def ask(self, op: str, **args: Any) -> P.Event:
        assert self.conn is not None
        self.rid += 1
        self.conn.send(P.Request(self.rid, op, args))
        return self.conn.until(P.Result)

    def first(self) -> None:
        assert self.call("device_list_publish", **S.first_device(self.user, self.identity, self.name, self.keys,
                                                                  K.now_ms())) == {"counter": 1}
        self.upload()

    def upload(self) -> None:
        assert self.call("prekeys_upload", **S.refill(self.identity, self.keys, 0, None, K.now_ms())) \
            == {"available": S.BATCH}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def pair(srv: ServerProc, approver: Device, new: Device, *, upload: bool = True) -> None:
    """6.4 over the wire: the new device's password login is pending; code, approval, pair_complete."""
    new.password()
    assert new.ok is not None and new.ok.pending and new.ok.device is None
    started = new.call("pair_start", name=new.name)
    shown = approver.call("pair_lookup", code=started["code"])
    current = M.Directory.parse(approver.call("device_list", user=approver.user))
    args = S.approve(approver.user, approver.identity, approver.keys, started["code"], shown, current, K.now_ms())
    approver.call("pair_approve", **args)
    S.complete(new.user, new.identity, new.keys, new.call("pair_complete"))
    new.close()
    new.key()  # now a listed device: logs in with its own key
    assert new.ok is not None and not new.ok.pending and new.ok.device == new.id.hex()
    if upload:
        new.upload()


#: The PostgreSQL URL of each running server started on one (tests/cluster.py), to read its mailbox.
#: Keyed by id(): an entry must go with its server, or a later SQLite server given the same id
#: would read an old PostgreSQL database (the CI flake of 1844bcb: "mailbox empty" on [sqlite]).
_PG: dict[int, str] = {}


@pytest.fixture(params=["sqlite", "postgres"])
def world(tmp_path, request):
    db: tuple[str, ...] = ()
    if request.param == "postgres":  # the same behaviour with the relay's store on PostgreSQL (item 5)
        from securecomm.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")
        PostgresStore(url, migrate=True).close()
        db = ("--db", url)
    srv = ServerProc(tmp_path / "srv", *db).start()
    if db:
        _PG[id(srv)] = db[1]
    add_user(srv.home, "alice", *db)
    add_user(srv.home, "bob", *db)
    laptop = Device(srv, tmp_path / "alice-laptop", "alice", "laptop").password()
    laptop.first()
    phone = Device(srv, tmp_path / "alice-phone", "alice", "phone")
    bob = Device(srv, tmp_path / "bob", "bob", "desk").password()
    bob.first()
    try:
        yield srv, laptop, phone, bob
    finally:
        _PG.pop(id(srv), None)
        for d in (laptop, phone, bob):
            d.close()
        srv.stop()


def _mailbox(srv: ServerProc) -> list[tuple[int, bytes | None]]:
    if id(srv) in _PG:
        import psycopg

        with psycopg.connect(_PG[id(srv)]) as pg:
            return [(int(i), None if d is None else bytes(d))
                    for i, d in pg.execute("SELECT id, recipient_device FROM mailbox ORDER BY id")]
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return [(int(i), None if d is None else bytes(d))
                for i, d in con.execute("SELECT id, recipient_device FROM mailbox ORDER BY id")]
    finally:
        con.close()


def _fan_out(bob: Device, text: bytes) -> list[M.Outgoing]:
    theirs = M.Directory.parse(bob.call("prekeys_claim", user="alice"))
    out = M.seal_direct(bob.identity, "bob", "alice", text, bob.pins, theirs, None)
    assert bob.conn is not None
    for o in out:
        bob.conn.send(P.Direct("alice", o.envelope))
        receipt = bob.conn.until(P.Receipt)
        assert isinstance(receipt, P.Receipt), receipt
        assert not receipt.duplicate  # before: the second device's copy was "a retry" and never stored
    return out


def _read(device: Device, sender: Device) -> tuple[P.Deliver, M.Incoming]:
    assert device.conn is not None
    deliver = device.conn.until(P.Deliver)
    assert isinstance(deliver, P.Deliver), deliver
    theirs = M.Directory.parse(device.call("device_list", user=sender.user))
    return deliver, M.open_direct(device.identity, device.user, sender.user, deliver.envelope, device.pins,
                                  theirs, device.keys)


def _ack(device: Device, deliver: P.Deliver, got: M.Incoming) -> None:
    assert device.conn is not None
    digest = sha256(M.encode_body(got.sender, device.user, got.text))
    device.conn.send(P.Ack(deliver.seq, P.ACK_OK, digest,
                           device.identity.sign(delivered_transcript_v2(got.msg_id, digest))))


def test_two_devices_online_at_once_each_gets_its_copy_once(world):
    srv, laptop, phone, bob = world
    pair(srv, laptop, phone)
    # the laptop is still logged in (its key was not replaced): it answers
    assert laptop.conn is not None and not laptop.conn.closed()
    out = _fan_out(bob, b"hello both")
    assert sorted(o.device for o in out) == sorted([laptop.id, phone.id])
    assert len({K.parse_v2(o.envelope).header.msg_id for o in out}) == 1  # one message, one id
    rows = _mailbox(srv)
    assert sorted(d for _, d in rows) == sorted([laptop.id, phone.id])

    got = {}
    for device in (laptop, phone):
        deliver, incoming = _read(device, bob)
        assert incoming.text == b"hello both" and deliver.sender == "bob"
        got[device.name] = (deliver, incoming)
    # the laptop ACKs its copy: the phone's stays
    _ack(laptop, *got["laptop"])
    assert bob.conn is not None
    delivered = bob.conn.until(P.Delivered)
    assert isinstance(delivered, P.Delivered) and delivered.by == "alice" and delivered.device == laptop.id
    assert [d for _, d in _mailbox(srv)] == [phone.id]
    # the laptop cannot ACK (delete) the phone's copy
    assert laptop.conn is not None
    laptop.conn.send(P.Ack(got["phone"][0].seq, P.ACK_OK, bytes(32), bytes(64)))
    assert not laptop.conn.closed()
    assert [d for _, d in _mailbox(srv)] == [phone.id]
    _ack(phone, *got["phone"])
    delivered = bob.conn.until(P.Delivered)
    assert isinstance(delivered, P.Delivered) and delivered.device == phone.id
    assert _mailbox(srv) == []
    # a retry of the same copy is a duplicate again (per sender device, recipient device, msg_id)
    bob.conn.send(P.Direct("alice", out[0].envelope))
    again = bob.conn.until(P.Receipt)
    assert isinstance(again, P.Receipt) and again.duplicate
    assert _mailbox(srv) == []


def test_offline_delivery_at_login_is_per_device(world):
    srv, laptop, phone, bob = world
    pair(srv, laptop, phone)
    laptop.close()
    phone.close()
    _fan_out(bob, b"while you were out")
    for device in (phone, laptop):
        device.key()
        deliver, incoming = _read(device, bob)
        assert incoming.text == b"while you were out"
        _ack(device, deliver, incoming)
        assert device.conn is not None
        device.conn.send(P.Ping())
        assert isinstance(device.conn.until(P.Pong), P.Pong)  # exactly one DELIVER came before it
        device.close()
    assert _mailbox(srv) == []


@pytest.mark.parametrize("frame", [
    lambda: P.Request(1, "device_list", {"user": "alice"}),
    lambda: P.Request(1, "prekeys_status", {}),
    lambda: P.Request(1, "lookup", {"user": "bob"}),
    lambda: P.Direct("bob", b"\x00" * 200),
    lambda: P.Ack(1, P.ACK_OK, bytes(32), bytes(64)),
])
def test_a_pending_device_is_refused_everything_but_pairing(world, frame):
    _, laptop, phone, _ = world
    phone.password()
    assert phone.ok is not None and phone.ok.pending
    assert phone.conn is not None
    phone.conn.send(P.Ping())
    assert isinstance(phone.conn.until(P.Pong), P.Pong)
    assert "code" in phone.call("pair_start", name="phone")
    phone.conn.send(frame())
    err = phone.conn.error()
    assert err.code == P.ErrorCode.BAD_STATE and err.fatal
    assert phone.conn.closed()
    # nothing was registered: the laptop's key still logs in and the phone's does not
    laptop.close()
    laptop.key()
    raw = Raw(world[0]).start()
    assert raw.hello is not None
    raw.send(P.LoginKey("alice", phone.identity.sign(
        P.login_transcript(raw.hello.challenge, raw.server_identity.fingerprint, "alice"))))
    assert raw.error().code == P.ErrorCode.AUTH_FAILED
    raw.close()


def test_a_pending_device_gets_no_mail(world):
    srv, _, phone, bob = world
    _fan_out(bob, b"for the laptop only")
    phone.password()
    assert phone.conn is not None
    phone.conn.send(P.Ping())
    ev = phone.conn.next()
    assert isinstance(ev, P.Pong), ev  # no DELIVER before it
    assert len(_mailbox(srv)) == 1


def test_removed_device_session_closed_key_refused_and_mail_dropped(world):
    srv, laptop, phone, bob = world
    pair(srv, laptop, phone)
    phone.close()
    _fan_out(bob, b"to be dropped")  # the phone's copy waits
    assert phone.id in [d for _, d in _mailbox(srv)]
    phone.key()
    # the phone reads nothing yet; the laptop removes it
    current = M.Directory.parse(laptop.call("device_list", user="alice"))
    answer = laptop.call("device_remove", **S.remove("alice", laptop.keys, current, phone.id, K.now_ms()))
    assert answer["removed"] == phone.id.hex()
    assert phone.conn is not None
    err = phone.conn.error()
    assert err.code == P.ErrorCode.DEVICE_REMOVED and err.fatal
    # closed by the server at once, without a word from the client (the spec-only client's check: it stayed
    # open, holding a session slot, until --idle-timeout or until the client sent something)
    assert phone.conn.next() is None
    assert phone.id not in [d for _, d in _mailbox(srv)]  # its waiting mail went with it
    if id(srv) in _PG:  # and PostgreSQL's shared mailbox count (quota_usage) lost it in the same statement
        import psycopg

        with psycopg.connect(_PG[id(srv)]) as pg:
            counted = pg.execute("SELECT q.messages FROM quota_usage q JOIN users u ON u.id = q.owner_id "
                                 "WHERE q.kind = 1 AND u.name = 'alice'").fetchone()
            waiting = pg.execute("SELECT COUNT(*) FROM mailbox m JOIN users u ON u.id = m.recipient_id "
                                 "WHERE u.name = 'alice'").fetchone()
        assert counted is not None and counted[0] == waiting[0] == 1
    # its key login is told why, not "unknown key"
    raw = Raw(srv).start()
    assert raw.hello is not None
    raw.send(P.LoginKey("alice", phone.identity.sign(
        P.login_transcript(raw.hello.challenge, raw.server_identity.fingerprint, "alice"))))
    err = raw.error()
    assert err.code == P.ErrorCode.DEVICE_REMOVED and err.fatal
    raw.close()
    # the laptop still works
    assert laptop.conn is not None and not laptop.conn.closed()


def test_a_new_device_password_login_does_not_replace_the_first_key(world):
    """Before: KEY_REPLACE (fatal), and with --replace-key the laptop's sessions were closed."""
    _, laptop, phone, _ = world
    phone.password()
    assert phone.ok is not None and phone.ok.pending
    assert laptop.conn is not None and not laptop.conn.closed()
    laptop.close()
    laptop.key()
    assert laptop.ok is not None and laptop.ok.device == laptop.id.hex() and not laptop.ok.pending


# -- NOTICE 0x97 (item 3) ------------------------------------------------------------------------------
def _notice(device: Device) -> P.Notice:
    assert device.conn is not None
    ev = device.conn.until(P.Notice)
    assert isinstance(ev, P.Notice), ev
    return ev


def test_notices_on_pairing_add_and_remove(world):
    srv, laptop, phone, bob = world
    phone.password()
    code = phone.call("pair_start", name="phone")["code"]
    # a second session of the laptop (another program on the same device) hears about it too
    other = Device(srv, laptop.home, "alice", "laptop")
    other.identity, other.keys = laptop.identity, laptop.keys
    other.key()
    shown = laptop.call("pair_lookup", code=code)
    current = M.Directory.parse(laptop.call("device_list", user="alice"))
    laptop.call("pair_approve", **S.approve("alice", laptop.identity, laptop.keys, code, shown, current, K.now_ms()))
    assert _notice(phone) == P.Notice("paired", "alice", phone.id)  # only the waiting device is told "paired"
    for session in (laptop, other):
        assert _notice(session) == P.Notice("device_added", "alice", phone.id, 2)
    S.complete("alice", phone.identity, phone.keys, phone.call("pair_complete"))
    phone.close()
    phone.key()
    # bob is another account: he hears nothing
    assert bob.conn is not None
    bob.conn.send(P.Ping())
    assert isinstance(bob.conn.next(), P.Pong)

    current = M.Directory.parse(laptop.call("device_list", user="alice"))
    laptop.call("device_remove", **S.remove("alice", laptop.keys, current, phone.id, K.now_ms()))
    for session in (laptop, other, phone):
        assert _notice(session) == P.Notice("device_removed", "alice", phone.id, 3)
    assert phone.conn is not None
    err = phone.conn.error()
    assert err.code == P.ErrorCode.DEVICE_REMOVED and err.fatal
    other.close()


def _before_pong(device: Device) -> list[P.Notice]:
    """The NOTICEs that come before the answer to a PING sent now."""
    assert device.conn is not None
    device.conn.send(P.Ping())
    seen = []
    while not isinstance(ev := device.conn.next(), P.Pong):
        assert isinstance(ev, P.Notice), ev
        seen.append(ev)
    return seen


def test_prekeys_low_goes_to_that_device_only(world):
    srv, laptop, phone, bob = world
    pair(srv, laptop, phone, upload=False)
    batch = phone.keys.new_one_time(phone.identity, K.REFILL_BELOW + 1)
    assert phone.call("prekeys_upload", one_time=[p.encode().hex() for p in batch]) \
        == {"available": K.REFILL_BELOW + 1}
    bob.call("prekeys_claim", user="alice")
    assert laptop.conn is not None and phone.conn is not None
    assert _before_pong(phone) == []  # 20 left: not low yet
    bob.call("prekeys_claim", user="alice")
    assert _notice(phone) == P.Notice("prekeys_low", "alice", phone.id)
    assert phone.call("prekeys_status")["available"] == K.REFILL_BELOW - 1
    assert [n.event for n in _before_pong(laptop)] == ["device_added"]  # the laptop (98 left) is not told


# -- ROOM_KEY version 2 (item 4) ----------------------------------------------------------------------
def _room_keys(bob: Device) -> list[M.Outgoing]:
    theirs = M.Directory.parse(bob.call("prekeys_claim", user="alice"))
    return M.seal_sender_key(bob.identity, "lobby", b"a sender key", bob.pins, [theirs])


def test_a_room_key_v2_reaches_only_the_device_it_is_sealed_to(world):
    srv, laptop, phone, bob = world
    pair(srv, laptop, phone)
    out = _room_keys(bob)
    assert sorted(o.device for o in out) == sorted([laptop.id, phone.id])
    assert bob.conn is not None
    for o in out:
        bob.conn.send(P.RoomKey("alice", o.envelope))
    for device in (laptop, phone):
        assert device.conn is not None
        got = device.conn.until(P.RoomKey)
        assert isinstance(got, P.RoomKey) and got.user == "bob"
        assert K.parse_v2(got.envelope).header.recipient == device.id  # its own copy
        assert [n.event for n in _before_pong(device) if n.event == "prekeys_low"] == []
        device.conn.send(P.Ping())
        assert isinstance(device.conn.next(), P.Pong)  # and not the other device's copy


def test_room_key_v2_refusals_keep_the_connection(world):
    _, laptop, _, bob = world
    assert bob.conn is not None
    # sealed to the device identity, not to a prekey: refused (6.6 "no prekey")
    bob.conn.send(P.RoomKey("alice", K.seal_v2(b"k", bob.identity, laptop.identity.public, None)))
    err = bob.conn.error()
    assert err.code == P.ErrorCode.INTEGRITY and not err.fatal and err.msg_id is not None
    # sealed to a device that is not on alice's list
    stranger = PrivateIdentity.generate(KEM)
    prekey = DeviceKeys(laptop.home.parent / "stranger", KEM).new_one_time(stranger, 1)[0]
    bob.conn.send(P.RoomKey("alice", K.seal_v2(b"k", bob.identity, stranger.public, prekey)))
    assert bob.conn.error().code == P.ErrorCode.WRONG_RECIPIENT
    assert not bob.conn.closed()
    assert laptop.conn is not None
    laptop.conn.send(P.Ping())
    assert isinstance(laptop.conn.next(), P.Pong)  # nothing was relayed


# -- protocol version 2 sessions (item 6) -------------------------------------------------------------
def _v2_session(device: Device) -> Raw:
    raw = Raw(device.srv)
    raw.send(P.Hello((1, 2)))
    hello = raw.until(P.ServerHello)
    assert isinstance(hello, P.ServerHello) and hello.version == 2
    raw.hello = hello
    return raw.login_key(device.user, device.identity)


def test_a_version_1_hello_is_refused_by_name_and_a_version_2_one_answered(world):
    """Version 1 is no longer served (docs/PROTOCOL.md 6.7): a HELLO listing only 1 is refused, fatal,
    with a text naming the version; one listing 1 and 2 (what the client offers) is answered 2."""
    srv = world[0]
    raw = Raw(srv)
    raw.send(P.Hello((1,)))
    err = raw.error()
    assert err.code == P.ErrorCode.VERSION and err.fatal and "version 1 is no longer served" in err.message
    raw.close()
    raw = Raw(srv).start()
    assert raw.hello is not None and raw.hello.version == 2
    raw.close()


def test_a_version_1_hello_is_still_served_where_the_config_says_so(tmp_path):
    """ServerConfig.serve_version_1 (no command-line option) keeps the transitional behaviour reachable
    for a benchmark's version-1 baseline: a HELLO listing only 1 is answered version 1."""
    srv = ServerProc(tmp_path / "v1", serve_version_1=True).start()
    try:
        raw = Raw(srv).start((1,))
        assert raw.hello is not None and raw.hello.version == 1
        raw.close()
    finally:
        srv.stop()


def test_a_version_2_session_refuses_version_1_envelopes(world):
    from securecomm.crypto import envelope as E

    srv, laptop, _, bob = world
    v2 = _v2_session(bob)
    v1 = E.seal(b"old style", bob.identity, laptop.identity.public)
    msg_id = E.peek_msg_id(v1)
    for frame in (P.Direct("alice", v1), P.RoomKey("alice", v1)):
        v2.send(frame)
        err = v2.error()
        assert err.code == P.ErrorCode.INTEGRITY and not err.fatal and err.msg_id == msg_id
        assert "version 1 envelope refused" in err.message
    assert not v2.closed()
    assert _mailbox(srv) == []
    # a version-2 envelope in the same session goes through
    theirs = M.Directory.parse(bob.call("prekeys_claim", user="alice"))
    (out,) = M.seal_direct(bob.identity, "bob", "alice", b"new style", bob.pins, theirs, None)
    v2.send(P.Direct("alice", out.envelope))
    assert isinstance(v2.until(P.Receipt), P.Receipt)
    v2.close()


def test_the_version_switch_refuses_a_hello_listing_only_1_once_flipped():
    from securecomm.server import versions

    assert versions.SERVE_VERSION_1 is False  # off by default (issue 12: old envelopes refused by name)
    assert versions.agreed([1]) is None
    assert versions.agreed([1], serve_version_1=False) is None
    assert versions.agreed([1, 2], serve_version_1=False) == versions.agreed([2], serve_version_1=False) == 2
    assert versions.agreed([1, 2, 7], serve_version_1=True) == 2


# -- across relays (PostgreSQL + NATS, item 5) --------------------------------------------------------
def test_a_device_on_another_relay_gets_its_mail_notices_and_removal(tmp_path, pg_url, nats_server):
    """Alice's laptop and Bob on relay A, her phone on relay B: the pairing NOTICE, the phone's copy of a
    fan-out and its removal reach it through the bus and the shared store."""
    from tests.relays import start_relays, stop_all

    relays = start_relays(tmp_path / "srv", pg_url, nats_server.url, 2)
    a, b = relays
    devices: list[Device] = []
    try:
        add_user(a.home, "alice", "--db", pg_url)
        add_user(a.home, "bob", "--db", pg_url)
        laptop = Device(a, tmp_path / "alice-laptop", "alice", "laptop").password()
        laptop.first()
        bob = Device(a, tmp_path / "bob", "bob", "desk").password()
        bob.first()
        phone = Device(b, tmp_path / "alice-phone", "alice", "phone").password()
        devices += [laptop, bob, phone]
        assert phone.ok is not None and phone.ok.pending
        code = phone.call("pair_start", name="phone")["code"]
        shown = laptop.call("pair_lookup", code=code)
        current = M.Directory.parse(laptop.call("device_list", user="alice"))
        laptop.call("pair_approve", **S.approve("alice", laptop.identity, laptop.keys, code, shown, current,
                                                K.now_ms()))
        assert _notice(phone) == P.Notice("paired", "alice", phone.id)  # from relay A to relay B
        S.complete("alice", phone.identity, phone.keys, phone.call("pair_complete"))
        phone.close()
        phone.key()
        phone.upload()

        _fan_out(bob, b"across relays")
        for device in (laptop, phone):
            deliver, incoming = _read(device, bob)
            assert incoming.text == b"across relays"
            _ack(device, deliver, incoming)
        assert bob.conn is not None
        got = {d.device for d in (bob.conn.until(P.Delivered), bob.conn.until(P.Delivered))
               if isinstance(d, P.Delivered)}
        assert got == {laptop.id, phone.id}

        current = M.Directory.parse(laptop.call("device_list", user="alice"))
        laptop.call("device_remove", **S.remove("alice", laptop.keys, current, phone.id, K.now_ms()))
        assert _notice(phone) == P.Notice("device_removed", "alice", phone.id, 3)
        assert phone.conn is not None
        err = phone.conn.error()
        assert err.code == P.ErrorCode.DEVICE_REMOVED and err.fatal
    finally:
        for d in devices:
            d.close()
        stop_all(relays)


def test_a_removed_first_device_whose_key_is_registered_cannot_log_back_in(world):
    # Attack F7: the laptop (the account's registered version-1 key) removed by the phone logged
    # straight back in with its key, and its DIRECTs were stored. Its key login is DEVICE_REMOVED.
    srv, laptop, phone, _ = world
    pair(srv, laptop, phone)
    current = M.Directory.parse(phone.call("device_list", user="alice"))
    answer = phone.call("device_remove", **S.remove("alice", phone.keys, current, laptop.id, K.now_ms()))
    assert answer["removed"] == laptop.id.hex()
    raw = Raw(srv).start()
    assert raw.hello is not None
    raw.send(P.LoginKey("alice", laptop.identity.sign(
        P.login_transcript(raw.hello.challenge, raw.server_identity.fingerprint, "alice"))))
    err = raw.error()
    assert err.code == P.ErrorCode.DEVICE_REMOVED and err.fatal
    raw.close()


def test_mail_a_removed_device_sent_goes_with_it(world):
    """The attacker's check: mail the phone sent before the laptop removed it was still delivered, and
    bob's client, checking it against alice's new list, showed "REJECTED a message claiming to be from
    alice" (exit 6): a forgery alarm for a message that was not one. Now it is deleted with the device
    (6.7), on SQLite and PostgreSQL alike."""
    srv, laptop, phone, bob = world
    pair(srv, laptop, phone)
    theirs = M.Directory.parse(phone.call("prekeys_claim", user="bob"))
    mine = M.Directory.parse(phone.call("prekeys_claim", user="alice"))
    out = M.seal_direct(phone.identity, "alice", "bob", b"sent before the removal", phone.pins, theirs, mine)
    assert phone.conn is not None
    for o in out:
        phone.conn.send(P.Direct(o.to, o.envelope))
        assert isinstance(phone.conn.until(P.Receipt), P.Receipt)
    waiting = _mailbox(srv)
    assert bob.id in [d for _, d in waiting] and laptop.id in [d for _, d in waiting]  # bob's, and alice's "sent"
    current = M.Directory.parse(laptop.call("device_list", user="alice"))
    laptop.call("device_remove", **S.remove("alice", laptop.keys, current, phone.id, K.now_ms()))
    assert _mailbox(srv) == []  # before: bob's copy and the laptop's waited, to be called forgeries
    assert bob.conn is not None and not bob.conn.closed()
