"""Direct messages to every device, with pinned user keys (client/devicemail.py, client/pins.py), no network.

Alice has a laptop and a phone, Bob one device; the server side is the real
DeviceOps on SQLite (tests/test_deviceops.py's World). Messages reach every
device of the recipient and the sender's other devices (as sent), each
sealed to its own one-time prekey; a removed device's messages are refused;
a new user key is a CHANGED error, louder for a verified contact.
"""

from __future__ import annotations

import pytest

from securecomm.client import devicemail as M
from securecomm.client.pins import Pins, VerifiedKeyChangedError
from securecomm.crypto import devices as D
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import ChangedKeyError, FormatError, StaleDeviceListError, UnknownSenderError
from securecomm.store.devicekeys import DeviceKeys
from tests.test_deviceops import Account, World


@pytest.fixture()
def w(tmp_path):
    world = World(tmp_path)
    yield world
    world.store.close()


class Device:
    def __init__(self, w: World, account: Account, identity: PrivateIdentity, keys: DeviceKeys, tag: str) -> None:
        self.w, self.account, self.identity, self.keys = w, account, identity, keys
        self.pins = Pins.load(w.tmp / f"{account.user}-{tag}-pins.json")

    def caller(self):
        return self.w.caller(self.account.user, self.identity)

    def claim(self, user: str) -> M.Directory:
        return M.Directory.parse(self.w.call(self.caller(), "prekeys_claim", user=user).data)

    def send(self, to: str, text: bytes) -> list[M.Outgoing]:
        return M.seal_direct(self.identity, self.account.user, to, text, self.pins, self.claim(to),
                             self.claim(self.account.user))

    def receive(self, sender: str, env: bytes) -> M.Incoming:
        directory = M.Directory.parse(self.w.call(self.caller(), "device_list", user=sender).data)
        return M.open_direct(self.identity, self.account.user, sender, env, self.pins, directory, self.keys)


def _upload(w: World, device: Device, n: int = 5) -> None:
    batch = device.keys.new_one_time(device.identity, n)
    w.call(device.caller(), "prekeys_upload", one_time=[p.encode().hex() for p in batch],
           last_resort=device.keys.new_last_resort(device.identity, w.now).encode().hex())


def _setup(w: World) -> tuple[Device, Device, Device]:
    alice, bob = Account(w, "alice"), Account(w, "bob")
    laptop = Device(w, alice, alice.device, alice.keys, "laptop")
    phone_id = PrivateIdentity.generate("x25519")
    alice.pair(phone_id, "phone")
    phone = Device(w, alice, phone_id, DeviceKeys(w.tmp / "alice-phone", "x25519"), "phone")
    bobd = Device(w, bob, bob.device, bob.keys, "bob")
    for d in (laptop, phone, bobd):
        _upload(w, d)
    return laptop, phone, bobd


def _to(out: list[M.Outgoing], device: Device) -> bytes:
    return next(o.envelope for o in out if o.device == device.identity.public.fingerprint)


def test_a_message_reaches_every_device_and_the_senders_others(w):
    laptop, phone, bob = _setup(w)
    out = bob.send("alice", b"hi alice")
    assert {o.device for o in out} == {laptop.identity.public.fingerprint, phone.identity.public.fingerprint}
    assert len({M.K.parse_v2(o.envelope).header.msg_id for o in out}) == 1  # one message, two copies
    for device in (laptop, phone):
        got = device.receive("bob", _to(out, device))
        assert (got.conversation, got.text, got.sent_by_me) == ("bob", b"hi alice", False)
    reply = laptop.send("bob", b"hi bob")
    assert sorted(o.to for o in reply) == ["alice", "bob"]  # bob's device, and alice's phone as a sent copy
    assert bob.receive("alice", _to(reply, bob)).text == b"hi bob"
    copy = phone.receive("alice", _to(reply, phone))
    assert copy.sent_by_me and copy.conversation == "bob" and copy.text == b"hi bob"


def test_a_removed_devices_message_is_refused(w):
    laptop, phone, bob = _setup(w)
    early = phone.send("bob", b"from the phone")
    alice = laptop.account
    alice.counter = 3
    w.call(alice.me(), "device_remove", device=phone.identity.public.fingerprint.hex(),
           **alice.list_args(alice.certs[:1]))
    with pytest.raises(UnknownSenderError):
        bob.receive("alice", _to(early, bob))
    assert {o.device for o in bob.send("alice", b"still there?")} == {laptop.identity.public.fingerprint}


def test_a_message_for_another_conversation_is_refused(w):
    laptop, _, bob = _setup(w)
    directory = bob.claim("alice")
    bob.pins.devices("alice", directory.user_key, directory.device_list, directory.certs)
    i = next(i for i, c in enumerate(directory.certs) if c.device_id == laptop.identity.public.fingerprint)
    env = M.K.seal_v2(M.encode_body("bob", "carol", b"meant for carol"), bob.identity, directory.certs[i].device,
                      directory.prekeys[i])
    with pytest.raises(FormatError):
        laptop.receive("bob", env)


def test_a_new_user_key_is_changed_and_louder_when_verified(w):
    laptop, _, bob = _setup(w)
    bob.send("alice", b"pin it")
    alice = laptop.account
    alice.key = D.UserKey.generate()
    alice.certs = [D.DeviceCert.sign(alice.key, "alice", alice.device.public, "laptop", 0)]
    alice.counter = 1
    w.call(alice.me(True), "device_list_publish", reset=True, **alice.list_args())
    with pytest.raises(ChangedKeyError) as e:
        bob.send("alice", b"again")
    assert type(e.value) is ChangedKeyError
    bob.pins.mark_verified("alice")
    with pytest.raises(VerifiedKeyChangedError) as e:
        bob.send("alice", b"again")
    assert "VERIFIED" in e.value.message
    bob.pins.trust("alice")
    assert len(bob.send("alice", b"trusted")) == 1


def test_adding_a_device_does_not_change_the_pin(w):
    laptop, _, bob = _setup(w)
    bob.send("alice", b"pin it")
    alice = laptop.account
    tablet = PrivateIdentity.generate("x25519")
    alice.pair(tablet, "tablet")
    assert len(bob.send("alice", b"three devices now")) == 2  # the tablet has no prekeys yet: skipped
    assert bob.pins.get("alice").counter == 3


def test_an_older_list_is_refused_after_a_newer_one(w):
    laptop, _, bob = _setup(w)
    old = bob.claim("alice")
    alice = laptop.account
    alice.counter = 3
    w.call(alice.me(), "device_list_publish", **alice.list_args())
    bob.send("alice", b"sees list 3")
    with pytest.raises(StaleDeviceListError):
        bob.pins.devices("alice", old.user_key, old.device_list, old.certs)


def test_version_1_pin_migrates_without_a_warning(w, tmp_path):
    laptop, _, _ = _setup(w)
    alice = laptop.account
    got = M.Directory.parse(w.call(alice.me(), "device_list", user="alice").data)
    pins = Pins.load(tmp_path / "fresh-pins.json")
    assert pins.migrate("alice", laptop.identity.public, got.user_key, got.device_list, got.certs)
    stranger = Pins.load(tmp_path / "other-pins.json")
    assert not stranger.migrate("alice", PrivateIdentity.generate("x25519").public, got.user_key,
                                got.device_list, got.certs)


def test_a_room_sender_key_reaches_every_member_device(w):
    from securecomm.crypto import room as R

    laptop, phone, bob = _setup(w)
    key = R.SenderKey.generate()
    out = M.seal_sender_key(bob.identity, "lobby", key.encode("lobby"), bob.pins, [bob.claim("alice")])
    assert {o.device for o in out} == {laptop.identity.public.fingerprint, phone.identity.public.fingerprint}
    directory = M.Directory.parse(w.call(laptop.caller(), "device_list", user="bob").data)
    listed = laptop.pins.devices("bob", directory.user_key, directory.device_list, directory.certs)
    for device in (laptop, phone):
        env = M.K.parse_v2(_to(out, device))
        opened = device.keys.open(env, device.identity, M.sender_device(env, listed))
        assert R.SenderKey.decode(opened.body) == ("lobby", key)
        assert device.keys.get(M.K.ONE_TIME, env.header.prekey_id) is None  # erased once used
