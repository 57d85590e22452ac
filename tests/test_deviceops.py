"""The server's device requests (securecomm/server/deviceops.py) on a real SQLite store, no network.

The flow of docs/PROTOCOL.md 6.4-6.7: a first device publishes its list and
prekeys, a contact claims a prekey and seals to it, a second device pairs,
one is removed; and each refusal of section 6.10 with its code.
"""

from __future__ import annotations

from typing import Any

import pytest

from securecomm.crypto import devices as D
from securecomm.crypto import envelope as E
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.server.deviceops import CLAIM_BURST, CLAIMS_PER_MINUTE, Caller, DeviceOps, OpError, check_direct
from securecomm.store.db import Store
from securecomm.store.devicekeys import DeviceKeys
from securecomm.store.devices import DeviceStore
from securecomm.wire.messages import ErrorCode


class World:
    def __init__(self, tmp_path: Any) -> None:
        self.store = Store(tmp_path / "server.db")
        self.devices = DeviceStore(self.store.db)
        self.now = 1_000_000
        self.ops = DeviceOps(self.devices, self._find, clock=lambda: self.now)
        self.ids = {name: self.store.add_user(name, "x").id for name in ("alice", "bob")}
        self.tmp = tmp_path

    def _find(self, name: str) -> int | None:
        return self.ids.get(name)

    def caller(self, user: str, device: PrivateIdentity | None, password: bool = False) -> Caller:
        """As server/devicerelay.py makes it: `listed` is the device's id once it is on the account's list."""
        fp = None if device is None else device.public.fingerprint
        listed = fp if fp is not None and self.devices.device_user(fp) == self.ids[user] else None
        return Caller(self.ids[user], user, None if device is None else device.public, password, None, listed)

    def call(self, caller: Caller, op: str, **args: Any) -> Any:
        return self.ops.handle(caller, op, args)

    def refused(self, expect: ErrorCode, caller: Caller, op: str, **args: Any) -> str:
        with pytest.raises(OpError) as e:
            self.call(caller, op, **args)
        assert e.value.code == expect, e.value.detail
        return e.value.detail


class Account:
    """One user's first device, set up as the client will: user key, certificate, list, prekeys."""

    def __init__(self, w: World, user: str) -> None:
        self.w, self.user = w, user
        self.key = D.UserKey.generate()
        self.device = PrivateIdentity.generate("x25519")
        self.cert = D.DeviceCert.sign(self.key, user, self.device.public, "laptop", w.now)
        self.certs = [self.cert]
        self.counter = 1
        self.keys = DeviceKeys(w.tmp / f"{user}-device", "x25519")
        out = w.call(self.me(True), "device_list_publish", **self.list_args())
        assert out.data == {"counter": 1}

    def me(self, password: bool = False) -> Caller:
        return self.w.caller(self.user, self.device, password)

    def list_args(self, certs: list[D.DeviceCert] | None = None) -> dict[str, Any]:
        certs = self.certs if certs is None else certs
        dlist = D.DeviceList.sign(self.key, self.user, self.counter, self.w.now, [c.device_id for c in certs])
        return {"device_list": dlist.encode().hex(), "certs": [c.encode().hex() for c in certs]}

    def pair(self, device: PrivateIdentity, name: str) -> D.DeviceCert:
        """Add `device` as a real new device does (6.4): it asks to pair, this account approves."""
        code = self.w.call(self.w.caller(self.user, device, True), "pair_start", name=name).data["code"]
        cert = D.DeviceCert.sign(self.key, self.user, device.public, name, self.w.now)
        self.certs.append(cert)
        self.counter += 1
        hand_over = K.seal_v2(D.encode_user_key_transfer(self.user, self.key), self.device, device.public, None)
        self.w.call(self.me(), "pair_approve", code=code, cert=cert.encode().hex(), user_key=hand_over.hex(),
                    **self.list_args())
        return cert

    def upload(self, n: int = 5) -> Any:
        batch = self.keys.new_one_time(self.device, n)
        last = self.keys.new_last_resort(self.device, self.w.now)
        return self.w.call(self.me(), "prekeys_upload", one_time=[p.encode().hex() for p in batch],
                           last_resort=last.encode().hex())


@pytest.fixture()
def w(tmp_path):
    world = World(tmp_path)
    yield world
    world.store.close()


def test_first_device_publishes_uploads_and_a_contact_seals_to_a_one_time_prekey(w):
    alice, bob = Account(w, "alice"), Account(w, "bob")
    assert alice.upload(5).data == {"available": 5}
    status = w.call(alice.me(), "prekeys_status").data
    assert status["available"] == 5 and status["last_resort_ms"] == w.now and status["handed_out_below"] == 1
    got = w.call(bob.me(), "prekeys_claim", user="ALICE").data
    pinned = D.UserPublicKey.from_line(got["user_key"])
    assert pinned == alice.key.public
    certs = D.valid_devices("alice", pinned, D.DeviceList.decode(bytes.fromhex(got["device_list"])),
                            [D.DeviceCert.decode(bytes.fromhex(c)) for c in got["certs"]])
    prekey = K.Prekey.decode(bytes.fromhex(got["prekeys"][0]))
    env = K.seal_v2(b"hello alice", bob.device, certs[0].device, prekey)
    opened = alice.keys.open(env, alice.device, bob.device.public)
    assert opened.body == b"hello alice" and not opened.without_one_time_key
    status = w.call(alice.me(), "prekeys_status").data
    assert status["available"] == 4 and status["handed_out_below"] == 2  # id 1 was handed out


def test_claims_fall_back_to_the_last_resort_prekey(w):
    alice, bob = Account(w, "alice"), Account(w, "bob")
    alice.upload(1)
    kinds = [K.Prekey.decode(bytes.fromhex(w.call(bob.me(), "prekeys_claim", user="alice").data["prekeys"][0])).kind
             for _ in range(3)]
    assert kinds == [K.ONE_TIME, K.LAST_RESORT, K.LAST_RESORT]
    # none held: every id it used was handed out or was the last resort (ids 1 and 2)
    assert w.call(alice.me(), "prekeys_status").data["handed_out_below"] == 3


def test_prekey_with_a_bad_signature_is_refused(w):
    alice = Account(w, "alice")
    bad = bytearray(alice.keys.new_one_time(alice.device, 1)[0].encode())
    bad[-1] ^= 1
    w.refused(ErrorCode.PREKEY, alice.me(), "prekeys_upload", one_time=[bytes(bad).hex()])
    assert w.call(alice.me(), "prekeys_status").data["available"] == 0


def test_replayed_prekey_id_is_refused(w):
    alice = Account(w, "alice")
    batch = [p.encode().hex() for p in alice.keys.new_one_time(alice.device, 2)]
    w.call(alice.me(), "prekeys_upload", one_time=batch)
    assert "replay" in w.refused(ErrorCode.PREKEY, alice.me(), "prekeys_upload", one_time=batch[:1])


def test_list_not_signed_by_the_user_key_is_refused(w):
    alice = Account(w, "alice")
    alice.key, alice.counter = D.UserKey.generate(), 2
    alice.certs = [D.DeviceCert.sign(alice.key, "alice", alice.device.public, "laptop", 0)]
    w.refused(ErrorCode.DEVICE_LIST, alice.me(), "device_list_publish", **alice.list_args())


def test_stale_list_is_refused(w):
    alice = Account(w, "alice")
    w.refused(ErrorCode.DEVICE_LIST, alice.me(), "device_list_publish", **alice.list_args())


def test_new_user_key_needs_reset_and_the_password(w):
    alice = Account(w, "alice")
    alice.key = D.UserKey.generate()
    alice.certs = [D.DeviceCert.sign(alice.key, "alice", alice.device.public, "laptop", 0)]
    w.refused(ErrorCode.FORBIDDEN, alice.me(False), "device_list_publish", reset=True, **alice.list_args())
    assert w.call(alice.me(True), "device_list_publish", reset=True, **alice.list_args()).data == {"counter": 1}
    got = w.call(alice.me(), "device_list", user="alice").data
    assert got["user_key"] == alice.key.public.line


def _pair(w: World, alice: Account) -> tuple[PrivateIdentity, str]:
    phone = PrivateIdentity.generate("x25519")
    pending = w.caller("alice", phone, True)
    w.refused(ErrorCode.PAIRING, pending, "pair_complete")
    started = w.call(pending, "pair_start", name="phone").data
    assert started["expires_ms"] == w.now + D.CODE_TTL_MS
    return phone, started["code"]


def test_pairing_a_second_device(w):
    alice = Account(w, "alice")
    phone, code = _pair(w, alice)
    shown = w.call(alice.me(), "pair_lookup", code=code.lower()).data
    assert shown["device"] == phone.public.line and shown["name"] == "phone"
    cert = D.DeviceCert.sign(alice.key, "alice", phone.public, "phone", w.now)
    alice.certs.append(cert)
    alice.counter = 2
    hand_over = K.seal_v2(D.encode_user_key_transfer("alice", alice.key), alice.device, phone.public, None)
    out = w.call(alice.me(), "pair_approve", code=code, cert=cert.encode().hex(), user_key=hand_over.hex(),
                 **alice.list_args())
    assert {(n.event, n.device) for n in out.notices} == {("device_added", None), ("paired", phone.public.fingerprint)}
    done = w.call(w.caller("alice", phone), "pair_complete").data
    approver = D.DeviceCert.decode(bytes.fromhex(done["approver_cert"]))
    body = K.open_v2(bytes.fromhex(done["user_key"]), phone, approver.device, lambda *_: None,
                     require_prekey=False).body
    named = D.DeviceCert.decode(bytes.fromhex(done["cert"])).user_key_public
    key = D.decode_user_key_transfer(body, "alice", named)
    assert key.seed == alice.key.seed
    w.refused(ErrorCode.PAIRING, alice.me(), "pair_lookup", code=code)  # used


def test_pair_complete_from_a_listed_device_says_it_is_already_listed(w):
    """Spec-only client: the first device's pair_complete said 'has not been approved yet'."""
    alice = Account(w, "alice")
    assert "already on the account's device list" in w.refused(ErrorCode.PAIRING, alice.me(), "pair_complete")
    phone, _ = _pair(w, alice)
    assert "not been approved yet" in w.refused(ErrorCode.PAIRING, w.caller("alice", phone, True), "pair_complete")


def test_expired_pairing_code_is_refused(w):
    alice = Account(w, "alice")
    _, code = _pair(w, alice)
    w.now += D.CODE_TTL_MS
    assert "expired" in w.refused(ErrorCode.PAIRING, alice.me(), "pair_lookup", code=code)


def test_pairing_code_of_another_account_is_unknown(w):
    alice, bob = Account(w, "alice"), Account(w, "bob")
    _, code = _pair(w, alice)
    w.refused(ErrorCode.PAIRING, bob.me(), "pair_lookup", code=code)


def test_removing_a_device_closes_it_and_stops_its_uploads(w):
    alice = Account(w, "alice")
    phone = _paired(w, alice)  # a device joins by pairing only (attack F1)
    alice.counter = 3
    out = w.call(alice.me(), "device_remove", device=phone.public.fingerprint.hex(),
                 **alice.list_args(alice.certs[:1]))
    assert out.close == [phone.public.fingerprint] and out.data["removed"] == phone.public.fingerprint.hex()
    assert [n.event for n in out.notices] == ["device_removed"]
    w.refused(ErrorCode.FORBIDDEN, w.caller("alice", phone), "prekeys_upload", one_time=[])


def test_claims_are_rate_limited(w):
    alice, bob = Account(w, "alice"), Account(w, "bob")
    alice.upload(1)
    for _ in range(CLAIM_BURST):
        w.call(bob.me(), "prekeys_claim", user="alice")
    w.refused(ErrorCode.RATE_LIMITED, bob.me(), "prekeys_claim", user="alice")
    w.now += 60_000  # a minute later: CLAIMS_PER_MINUTE more, and not one over
    for _ in range(CLAIMS_PER_MINUTE):
        w.call(bob.me(), "prekeys_claim", user="alice")
    w.refused(ErrorCode.RATE_LIMITED, bob.me(), "prekeys_claim", user="alice")


def test_claims_are_budgeted_per_device(w):
    """The attacker's check (stop 26): a password-only session used up the account's claims and every
    `send` of its owner's devices failed; now a listed device has its own budget."""
    alice, bob = Account(w, "alice"), Account(w, "bob")
    alice.upload(1)
    password_only = w.caller("bob", None, True)
    for _ in range(CLAIM_BURST):
        w.call(password_only, "prekeys_claim", user="alice")
    w.refused(ErrorCode.RATE_LIMITED, password_only, "prekeys_claim", user="alice")
    assert w.call(bob.me(), "prekeys_claim", user="alice").data["user"] == "alice"


def test_unknown_user_and_op(w):
    alice = Account(w, "alice")
    w.refused(ErrorCode.NOT_FOUND, alice.me(), "prekeys_claim", user="nobody")
    w.refused(ErrorCode.NOT_FOUND, alice.me(), "device_list", user="bob")  # bob has no list yet
    w.refused(ErrorCode.UNKNOWN_TYPE, alice.me(), "prekeys_delete_all")
    w.refused(ErrorCode.BAD_FRAME, alice.me(), "device_list_publish", device_list=5, certs=[])


# -- the server's check of a version-2 DIRECT ------------------------------------------------------------

WINDOW = 5 * 60 * 1000


def _direct_world():
    alice, bob = PrivateIdentity.generate("x25519"), PrivateIdentity.generate("x25519")
    prekey = K.PrivatePrekey.generate(K.ONE_TIME, 1, "x25519")
    return alice, bob, prekey.sign(bob)


def _code(data: bytes, sender, devices, now=None) -> ErrorCode:
    with pytest.raises(OpError) as e:
        check_direct(data, sender, devices, WINDOW, now if now is not None else E.now_ms())
    return e.value.code


def test_direct_v2_passes_the_servers_checks():
    alice, bob, prekey = _direct_world()
    env = K.seal_v2(b"x", alice, bob.public, prekey)
    assert check_direct(env, alice.public, {bob.public.fingerprint}, WINDOW, E.now_ms()).header.prekey_id == 1


def test_direct_version_1_refused_by_name():
    alice, bob, _ = _direct_world()
    with pytest.raises(OpError) as e:
        check_direct(E.seal(b"x", alice, bob.public), alice.public, {bob.public.fingerprint}, WINDOW, E.now_ms())
    assert e.value.code == ErrorCode.INTEGRITY and "version 1" in e.value.detail


def test_direct_refusals():
    alice, bob, prekey = _direct_world()
    good = K.seal_v2(b"x", alice, bob.public, prekey)
    assert _code(K.seal_v2(b"x", alice, bob.public, None), alice.public, {bob.public.fingerprint}) \
        == ErrorCode.INTEGRITY  # no prekey
    assert _code(good, alice.public, {b"\x00" * 32}) == ErrorCode.WRONG_RECIPIENT  # unlisted (removed) device
    assert _code(good, alice.public, {bob.public.fingerprint}, E.now_ms() + 2 * WINDOW) == ErrorCode.STALE
    assert _code(good, bob.public, {bob.public.fingerprint}) == ErrorCode.FORBIDDEN  # not this session's device
    bad = bytearray(good)
    bad[-1] ^= 1
    assert _code(bytes(bad), alice.public, {bob.public.fingerprint}) == ErrorCode.INTEGRITY


def test_too_many_prekeys_in_a_batch_is_a_prekey_refusal(w):
    alice = Account(w, "alice")
    batch = [p.encode().hex() for p in alice.keys.new_one_time(alice.device, K.MAX_BATCH)]
    w.refused(ErrorCode.PREKEY, alice.me(), "prekeys_upload", one_time=[*batch, batch[0]])


def test_device_list_writes_last_seen_at_most_once_a_minute(w):
    # Attack F6: every own-account device_list was an fsync'd UPDATE on the event loop; now the
    # mark (and so the write) moves only when it is a minute old.
    alice = Account(w, "alice")
    me = alice.device.public.fingerprint.hex()
    first = w.now
    assert w.call(alice.me(), "device_list", user="alice").data["last_seen"][me] == first
    for _ in range(59):
        w.now += 1000
        assert w.call(alice.me(), "device_list", user="alice").data["last_seen"][me] == first
    assert w.devices.devices(w.ids["alice"])[0][3] == first
    w.now += 1000
    assert w.call(alice.me(), "device_list", user="alice").data["last_seen"][me] == w.now
    assert w.devices.devices(w.ids["alice"])[0][3] == w.now


def _spoiled(hex_prekey: str) -> str:
    raw = bytearray(bytes.fromhex(hex_prekey))
    raw[-1] ^= 1  # a bad signature: refused as such only if the signature is ever checked
    return bytes(raw).hex()


def test_replayed_and_overfull_uploads_are_refused_before_any_signature(w):
    # Attack F5: a replayed batch cost 100 signature checks and ML-KEM loads before the store
    # refused it. The cheap checks now come first: the refusal names the replay or the limit,
    # never the (spoiled) signatures, so none was checked.
    alice = Account(w, "alice")
    batch = [p.encode().hex() for p in alice.keys.new_one_time(alice.device, K.MAX_BATCH)]
    w.call(alice.me(), "prekeys_upload", one_time=batch)
    detail = w.refused(ErrorCode.PREKEY, alice.me(), "prekeys_upload", one_time=[_spoiled(p) for p in batch])
    assert "replay" in detail and "signature" not in detail
    w.call(alice.me(), "prekeys_upload",
           one_time=[p.encode().hex() for p in alice.keys.new_one_time(alice.device, K.MAX_BATCH)])
    more = [_spoiled(p.encode().hex()) for p in alice.keys.new_one_time(alice.device, 1)]
    detail = w.refused(ErrorCode.PREKEY, alice.me(), "prekeys_upload", one_time=more)
    assert f"at most {K.MAX_HELD}" in detail and "signature" not in detail
    assert w.call(alice.me(), "prekeys_status").data["available"] == K.MAX_HELD


def _squat(w: World, mallory: Account, victim: PrivateIdentity) -> str:
    """Mallory certifies another account's device key (which the directory gives anyone) on her list."""
    cert = D.DeviceCert.sign(mallory.key, mallory.user, victim.public, "stolen", w.now)
    mallory.counter += 1
    return w.refused(ErrorCode.DEVICE_LIST, mallory.me(), "device_list_publish",
                     **mallory.list_args([*mallory.certs, cert]))


def test_a_list_cannot_name_a_device_that_never_proved_its_key(w):
    # Attack F1 (f1/f1b scripts): Mallory's list named bob's registered device key, after which
    # bob could never publish a list of his own ("a listed device belongs to another account").
    mallory = Account(w, "alice")
    bob_device = PrivateIdentity.generate("x25519")
    assert "never proved" in _squat(w, mallory, bob_device)
    assert len(w.call(mallory.me(), "device_list", user="alice").data["certs"]) == 1  # nothing stored
    bob = Account.__new__(Account)  # bob's first list, from the device he proved
    bob.w, bob.user, bob.key, bob.device, bob.counter = w, "bob", D.UserKey.generate(), bob_device, 1
    bob.certs = [D.DeviceCert.sign(bob.key, "bob", bob_device.public, "laptop", w.now)]
    assert w.call(bob.me(True), "device_list_publish", **bob.list_args()).data == {"counter": 1}


def test_a_list_cannot_name_another_accounts_phone_waiting_to_pair(w):
    # Attack F1 (f1c script): Mallory's list named bob's phone while it waited to be paired, so
    # bob's pair_approve was refused. Now her list is refused and bob's pairing goes through.
    bob = Account(w, "bob")
    mallory = Account(w, "alice")
    phone = PrivateIdentity.generate("x25519")
    code = w.call(w.caller("bob", phone, True), "pair_start", name="phone").data["code"]
    _squat(w, mallory, phone)
    cert = D.DeviceCert.sign(bob.key, "bob", phone.public, "phone", w.now)
    bob.certs.append(cert)
    bob.counter = 2
    hand_over = K.seal_v2(D.encode_user_key_transfer("bob", bob.key), bob.device, phone.public, None)
    out = w.call(bob.me(), "pair_approve", code=code, cert=cert.encode().hex(), user_key=hand_over.hex(),
                 **bob.list_args())
    assert out.data == {"counter": 2}


def _paired(w: World, acct: Account) -> PrivateIdentity:
    """A second device of `acct`, paired and approved (list counter 2)."""
    phone, code = _pair(w, acct)
    cert = D.DeviceCert.sign(acct.key, acct.user, phone.public, "phone", w.now)
    acct.certs.append(cert)
    acct.counter = 2
    hand_over = K.seal_v2(D.encode_user_key_transfer(acct.user, acct.key), acct.device, phone.public, None)
    w.call(acct.me(), "pair_approve", code=code, cert=cert.encode().hex(), user_key=hand_over.hex(),
           **acct.list_args())
    return phone


def test_a_list_may_keep_its_devices_and_drop_one(w):
    alice = Account(w, "alice")
    phone = _paired(w, alice)
    alice.counter = 3  # the same two devices, re-signed: both already on the list
    assert w.call(alice.me(), "device_list_publish", **alice.list_args()).data == {"counter": 3}
    alice.counter = 4
    alice.certs = alice.certs[:1]
    out = w.call(alice.me(), "device_list_publish", **alice.list_args())
    assert out.close == [phone.public.fingerprint]


def _kinds(w: World, claimer: str) -> list[int]:
    out = w.call(Caller(w.ids[claimer], claimer, None), "prekeys_claim", user="alice").data
    return [K.Prekey.decode(bytes.fromhex(p)).kind for p in out["prekeys"]]


def test_one_time_prekeys_are_budgeted_per_claimer_and_per_target(w):
    # Attack F2: two accounts drained a user's one-time prekeys in 0.1 s (the limit was per
    # claimer only). Now each (claimer, device) pair gets PAIR_BURST and each device hands out
    # ONE_TIME_PER_HOUR to everyone; beyond, claims still work with the last-resort prekey.
    from securecomm.server.deviceops import ONE_TIME_PER_HOUR, PAIR_BURST
    alice = Account(w, "alice")
    alice.upload(K.MAX_BATCH)
    alice.upload(K.MAX_BATCH)
    claimers = [f"user{i}" for i in range(ONE_TIME_PER_HOUR // PAIR_BURST + 1)]
    w.ids.update({name: w.store.add_user(name, "x").id for name in claimers})
    assert [_kinds(w, claimers[0]) for _ in range(PAIR_BURST)] == [[K.ONE_TIME]] * PAIR_BURST
    assert _kinds(w, claimers[0]) == [K.LAST_RESORT]  # this pair's budget is spent, not refused
    for name in claimers[1:-1]:
        assert [_kinds(w, name) for _ in range(PAIR_BURST)] == [[K.ONE_TIME]] * PAIR_BURST
    assert _kinds(w, claimers[-1]) == [K.LAST_RESORT]  # the device's hourly budget is spent
    assert w.call(alice.me(), "prekeys_status").data["available"] == 2 * K.MAX_BATCH - ONE_TIME_PER_HOUR
    w.now += 3_600_000 // PAIR_BURST  # the pair's bucket refills one an hour/PAIR_BURST
    assert _kinds(w, claimers[0]) == [K.ONE_TIME]


def test_a_claim_naming_devices_hands_out_only_theirs(w):
    """`devices` (a room key goes only to the devices in the room, 6.7): a device not named keeps its prekey."""
    alice, bob = Account(w, "alice"), Account(w, "bob")
    alice.upload(5)
    other = alice.device.public.fingerprint.hex()
    got = w.call(bob.me(), "prekeys_claim", user="alice", devices=["00" * 32]).data
    assert got["certs"] == got["prekeys"] == []  # a device that is not hers: nothing claimed
    assert w.call(alice.me(), "prekeys_status").data["available"] == 5
    got = w.call(bob.me(), "prekeys_claim", user="alice", devices=[other]).data
    assert len(got["prekeys"]) == 1 and w.call(alice.me(), "prekeys_status").data["available"] == 4
    w.refused(ErrorCode.BAD_FRAME, bob.me(), "prekeys_claim", user="alice", devices="nope")


def test_device_changes_are_budgeted_per_device(w):
    """Attack check: pair_start pipelined from 8 connections stalled the relay (each is a write on its
    event loop); now WRITE_BURST at once, then WRITES_PER_MINUTE. Per listed device, and one budget for
    the account's sessions that are no listed device (pending ones, password-only): per account, a
    stolen phone not yet removed spent it all and its owner could not remove it (attacker, stop 26)."""
    from securecomm.server.deviceops import WRITE_BURST, WRITES_PER_MINUTE

    alice, bob = Account(w, "alice"), Account(w, "bob")  # one write each (the first list, before it is listed)
    pending = w.caller("alice", PrivateIdentity.generate("x25519"), True)
    for _ in range(WRITE_BURST - 1):
        w.call(pending, "pair_start", name="phone")
    assert "device changes" in w.refused(ErrorCode.RATE_LIMITED, pending, "pair_start", name="phone")
    other = w.caller("alice", PrivateIdentity.generate("x25519"), True)  # another unlisted key: the same budget
    w.refused(ErrorCode.RATE_LIMITED, other, "pair_start", name="tablet")
    assert alice.me().listed == alice.device.public.fingerprint
    assert alice.upload(1).data == {"available": 1}  # the listed device's own budget is untouched
    for _ in range(WRITE_BURST - 1):  # and a listed device spends only its own
        w.call(alice.me(), "prekeys_upload", one_time=[])
    w.refused(ErrorCode.RATE_LIMITED, alice.me(), "prekeys_upload", one_time=[])
    assert bob.upload(1).data == {"available": 1}  # another account is not touched
    w.call(alice.me(), "prekeys_status")  # reads are not counted
    w.now += 60_000 // WRITES_PER_MINUTE  # one token back
    w.call(pending, "pair_start", name="phone")
    w.refused(ErrorCode.RATE_LIMITED, pending, "pair_start", name="phone")
