"""Devices and forward secrecy over a real server (docs/PROTOCOL.md 6.6, 6.7): real TLS, real SQLite.

Alice and Bob each have one device (ML-KEM-768+X25519), publish their signed
device lists and a batch of 100 prekeys through REQUEST ops, and Bob sends
Alice a direct message sealed to one of her one-time prekeys. The envelope is
taken from the server's database before Alice acknowledges it.

The property: a copy of Alice's whole home folder and of the server's whole
data folder, taken after she read the message, opens nothing (our own code
paths and raw HPKE with every private key found). The same attack on a copy
taken *before* she read it succeeds, in the same run: that is the reference.
(Today's version-1 envelopes, sealed to the long-term identity, fall to the
"after" copy too: tests/test_forward_secrecy.py keeps that reference.)
"""

from __future__ import annotations

import shutil
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
from securecomm.wire.relayed import delivered_transcript
from tests.serverproc import ServerProc, add_user
from tests.test_error_table import Raw
from tests.test_forward_secrecy import _keys_on_disk, _raw_hpke_opens

KEM = "mlkem768-x25519"


class Device:
    def __init__(self, srv: ServerProc, home: Path, user: str) -> None:
        self.srv, self.home, self.user = srv, home, user
        self.identity = PrivateIdentity.generate(KEM)
        from securecomm.crypto import identity as I

        I.save(self.identity, home / "identities" / "default.key", home / "identities" / "default.pub")
        self.keys = DeviceKeys(home / "device", KEM)
        self.pins = Pins.load(home / "pins.json")
        self.rid = 0
        self.conn = Raw(srv).start().login_password(user, self.identity)

    def call(self, op: str, **args: Any) -> Any:
        self.rid += 1
        self.conn.send(P.Request(self.rid, op, args))
        ev = self.conn.until(P.Result)
        assert isinstance(ev, P.Result), ev
        return ev.data

    def set_up(self) -> None:
        assert self.call("device_list_publish", **S.first_device(self.user, self.identity, "laptop", self.keys,
                                                                  K.now_ms())) == {"counter": 1}
        assert self.call("prekeys_upload", **S.refill(self.identity, self.keys, 0, None, K.now_ms())) \
            == {"available": S.BATCH}


@pytest.fixture()
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    add_user(srv.home, "alice")
    add_user(srv.home, "bob")
    alice, bob = Device(srv, tmp_path / "alice", "alice"), Device(srv, tmp_path / "bob", "bob")
    alice.set_up()
    bob.set_up()
    yield srv, alice, bob
    for d in (alice, bob):
        d.conn.close()
    srv.stop()


def _mailbox(srv: ServerProc) -> list[bytes]:
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return [bytes(e) for (e,) in con.execute("SELECT envelope FROM mailbox ORDER BY id")]
    finally:
        con.close()


def _attack(recorded: list[bytes], stolen: list[Path], me: PrivateIdentity) -> list[bytes]:
    found: dict[str, list[Any]] = {"identities": [], "hpke": [], "prekeys": [], "sender_keys": []}
    for folder in stolen:
        for k, v in _keys_on_disk(folder).items():
            found[k] += v
    opened = []
    for data in recorded:
        body = _raw_hpke_opens(data, found["hpke"])
        if body is not None:
            opened.append(body)
    return opened


def test_direct_message_sealed_to_a_one_time_prekey_end_to_end(world, tmp_path):
    srv, alice, bob = world
    theirs = M.Directory.parse(bob.call("prekeys_claim", user="alice"))
    out = M.seal_direct(bob.identity, "bob", "alice", b"forward secret hello", bob.pins, theirs, None)
    assert len(out) == 1 and not out[0].without_one_time_key
    bob.conn.send(P.Direct("alice", out[0].envelope))
    receipt = bob.conn.until(P.Receipt)
    assert isinstance(receipt, P.Receipt) and receipt.sha256 == sha256(out[0].envelope)
    recorded = _mailbox(srv)
    assert recorded == [out[0].envelope]
    before = tmp_path / "stolen-before"
    shutil.copytree(alice.home, before / "home")
    shutil.copytree(srv.home, before / "srv")

    reader = Raw(srv).start().login_key("alice", alice.identity)
    deliver = reader.until(P.Deliver)
    assert isinstance(deliver, P.Deliver) and deliver.sender == "bob"
    alice.rid += 1
    reader.send(P.Request(alice.rid, "device_list", {"user": "bob"}))
    bob_dir = reader.until(P.Result)
    assert isinstance(bob_dir, P.Result)
    got = M.open_direct(alice.identity, "alice", "bob", deliver.envelope, alice.pins,
                        M.Directory.parse(bob_dir.data), alice.keys)
    assert (got.text, got.conversation, got.without_one_time_key) == (b"forward secret hello", "bob", False)
    digest = sha256(M.encode_body("bob", "alice", got.text))
    reader.send(P.Ack(deliver.seq, 1, digest, alice.identity.sign(delivered_transcript(got.msg_id, digest))))
    reader.send(P.Ping())
    assert isinstance(reader.until(P.Pong), P.Pong)
    reader.close()

    after = tmp_path / "stolen-after"
    shutil.copytree(alice.home, after / "home")
    shutil.copytree(srv.home, after / "srv")
    assert _attack(recorded, [after / "home", after / "srv"], alice.identity) == []
    # the reference, same run: the copy taken before she read it opens the message
    assert [b[32:] for b in _attack(recorded, [before / "home", before / "srv"], alice.identity)] \
        == [M.encode_body("bob", "alice", b"forward secret hello")]


def test_direct_sealed_to_a_long_term_key_is_refused(world):
    _, alice, bob = world
    bob.conn.send(P.Direct("alice", K.seal_v2(b"x", bob.identity, alice.identity.public, None)))
    err = bob.conn.error()
    # the peer gets INTEGRITY's fixed text (PROTOCOL.md 5.5.1); the reason is in the server's log
    assert err.code == P.ErrorCode.INTEGRITY and err.message == P.OPAQUE_TEXTS[P.ErrorCode.INTEGRITY]
    assert not err.fatal
    assert not bob.conn.closed()
    assert _mailbox(world[0]) == []


def test_prekey_ops_refusals_keep_the_connection(world):
    _, alice, _ = world
    bad = bytearray(alice.keys.new_one_time(alice.identity, 1)[0].encode())
    bad[-1] ^= 1
    alice.rid += 1
    alice.conn.send(P.Request(alice.rid, "prekeys_upload", {"one_time": [bytes(bad).hex()]}))
    err = alice.conn.error()
    assert err.code == P.ErrorCode.PREKEY and err.rid == alice.rid and not err.fatal
    assert not alice.conn.closed()
    assert alice.call("prekeys_status")["available"] == S.BATCH


def test_user_login_creates_the_user_key_list_and_prekeys(tmp_path):
    from tests.serverproc import login

    srv = ServerProc(tmp_path / "srv").start()
    try:
        add_user(srv.home, "carol")
        home = tmp_path / "carol"
        assert login(home, srv, "carol").returncode == 0
        device = home / "devices" / "default"
        assert (device / "user.key").stat().st_mode & 0o777 == 0o600
        held = sorted(p.name for p in (device / "prekeys").iterdir())
        assert len(held) == S.BATCH + 1 and "2-101.key" in held  # 100 one-time, then the last resort
        assert login(home, srv, "carol").returncode == 0  # again: listed, nothing to refill
        assert len(list((device / "prekeys").iterdir())) == S.BATCH + 1
        con = sqlite3.connect(srv.home / "securecomm.db")
        try:
            assert con.execute("SELECT COUNT(*) FROM prekeys").fetchone()[0] == S.BATCH + 1
            assert con.execute("SELECT counter FROM user_keys").fetchall() == [(1,)]
        finally:
            con.close()
    finally:
        srv.stop()


def test_a_device_erases_the_one_time_keys_claimed_from_it_and_never_used(tmp_path):
    """PROTOCOL.md 6.5, over a real server and the CLI: dave claims two of carol's one-time prekeys
    and sends nothing; carol's next login sees them handed out (`handed_out_below`), and
    once they have been out for the mailbox lifetime her device erases them. Before this, no
    client ever erased them (the spec's 30-day rule was not implemented)."""
    import json

    from tests.serverproc import login

    srv = ServerProc(tmp_path / "srv").start()
    try:
        add_user(srv.home, "carol")
        add_user(srv.home, "dave")
        home = tmp_path / "carol"
        assert login(home, srv, "carol").returncode == 0
        device = home / "devices" / "default"
        dave = Raw(srv).start().login_password("dave")
        for rid in (1, 2):
            dave.send(P.Request(rid, "prekeys_claim", {"user": "carol"}))
            assert isinstance(dave.until(P.Result), P.Result)
        dave.close()

        def again() -> None:  # a login, or a refill when the prekeys run low, asks prekeys_status
            r = login(home, srv, "carol")
            assert r.returncode == 0, r.stderr

        again()
        state = json.loads((device / "state.json").read_text())
        assert sorted(state["handed_out"], key=int) == ["1", "2"]
        assert (device / "prekeys" / "1-1.key").exists()  # mail sealed to them may still come
        state["handed_out"] = {k: v - K.UNUSED_ONE_TIME_MS for k, v in state["handed_out"].items()}
        (device / "state.json").write_text(json.dumps(state))  # as if seen gone 30 days ago
        again()
        held = {p.name for p in (device / "prekeys").iterdir()}
        assert "1-1.key" not in held and "1-2.key" not in held and "1-3.key" in held
        assert json.loads((device / "state.json").read_text())["handed_out"] == {}
    finally:
        srv.stop()
