"""The client's cache of verified device lists (client/directv2.py DeviceDirectory.verify, docs/PROTOCOL.md
6.13), against the real DeviceOps on SQLite (tests/test_deviceops.py's World), no network.

A list and its certificates already verified under the same key are not verified again; what must
still hold does: a changed list (a device added: counter 2) is verified and used at once, an older
list after a newer one is still stale, and a list under a user key other than the pinned one is
still a key change, even when its bytes were verified and cached before the pin changed. A prekey
remembers the device it was verified under (a claim made ahead is checked as it arrives), and
that never vouches for it under another device. The server's one read per version-2 DIRECT sees
a removed device at once.
"""

from __future__ import annotations

import pytest

from securecomm.client.devicemail import Directory
from securecomm.client.directv2 import DeviceDirectory
from securecomm.client.pins import Pins
from securecomm.crypto import devices as D
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import ChangedKeyError, StaleDeviceListError
from tests.test_deviceops import Account, World


@pytest.fixture()
def w(tmp_path):
    world = World(tmp_path)
    yield world
    world.store.close()


def _directory(w: World, asker: Account, user: str) -> Directory:
    return Directory.parse(w.call(asker.me(), "device_list", user=user).data)


def _bobs_directory(w: World, bob: Account) -> DeviceDirectory:
    return DeviceDirectory(bob.device, "bob", bob.keys, Pins.load(w.tmp / "bob-pins.json"))


def test_a_changed_list_is_verified_and_used_at_once(w):
    alice, bob = Account(w, "alice"), Account(w, "bob")
    mine = _bobs_directory(w, bob)
    first = _directory(w, bob, "alice")
    assert [c.device_id for c in mine.verify("alice", first)] == [alice.device.public.fingerprint]
    again = _directory(w, bob, "alice")
    assert again.digest == first.digest  # the same bytes: answered from the cache
    assert [c.device_id for c in mine.verify("alice", again)] == [alice.device.public.fingerprint]
    phone = PrivateIdentity.generate("x25519")
    alice.pair(phone, "phone")
    newer = _directory(w, bob, "alice")
    assert newer.digest != first.digest and newer.device_list.counter == 2
    assert {c.device_id for c in mine.verify("alice", newer)} == \
        {alice.device.public.fingerprint, phone.public.fingerprint}
    with pytest.raises(StaleDeviceListError):  # the list cached first is older than one seen since
        mine.verify("alice", first)


def test_a_cached_list_under_a_user_key_no_longer_pinned_is_a_key_change(w):
    alice, bob = Account(w, "alice"), Account(w, "bob")
    mine = _bobs_directory(w, bob)
    old = _directory(w, bob, "alice")
    mine.verify("alice", old)  # pinned and cached
    alice.key, alice.counter = D.UserKey.generate(), 1  # alice starts over with a new user key (6.4 end)
    alice.certs = [D.DeviceCert.sign(alice.key, "alice", alice.device.public, "laptop", w.now)]
    w.call(alice.me(True), "device_list_publish", reset=True, **alice.list_args())
    with pytest.raises(ChangedKeyError):
        mine.verify("alice", _directory(w, bob, "alice"))
    mine.pins.trust("alice")  # bob accepts the new key: the old bytes, cached, are now a key change
    with pytest.raises(ChangedKeyError):
        mine.verify("alice", old)


def test_a_forged_list_with_the_cached_bytes_but_another_key_is_refused(w):
    Account(w, "alice")
    bob = Account(w, "bob")
    mine = _bobs_directory(w, bob)
    good = _directory(w, bob, "alice")
    mine.verify("alice", good)
    other = D.UserKey.generate().public
    forged = Directory(good.user, other, good.device_list, good.certs, good.prekeys, good.digest)
    with pytest.raises(ChangedKeyError):  # same digest, but not the pinned key: never from the cache
        mine.verify("alice", forged)


def test_a_prekey_checked_once_for_its_device_is_still_refused_for_another(w):
    from dataclasses import replace

    from securecomm.crypto import prekeys as K
    from securecomm.errors import PrekeySignatureError

    alice = Account(w, "alice")
    other = PrivateIdentity.generate("x25519")
    prekey = alice.keys.new_one_time(alice.device, 1)[0]
    prekey.verify(alice.device.public)  # remembered for alice's device
    prekey.verify(alice.device.public)
    with pytest.raises(PrekeySignatureError):
        prekey.verify(other.public)
    forged = replace(prekey, signature=bytes(64))  # a new object: nothing remembered
    with pytest.raises(PrekeySignatureError):
        forged.verify(alice.device.public)
    env = K.seal_v2(b"hi", other, alice.device.public, prekey)  # sealing still checks (remembered: passes)
    assert alice.keys.open(env, alice.device, other.public).body == b"hi"


def test_the_servers_one_read_for_a_direct_sees_a_removal_at_once(w):
    """server/devicerelay.py check: the recipient's devices and the sender device's account in one read,
    every message (nothing cached on the server), so a device removed a moment ago is refused."""
    alice, bob = Account(w, "alice"), Account(w, "bob")
    phone = PrivateIdentity.generate("x25519")
    phone_cert = alice.pair(phone, "phone")
    store = w.ops.store
    targets, owner = store.direct_targets(w.ids["bob"], phone.public.fingerprint)
    assert targets == {bob.device.public.fingerprint} and owner == w.ids["alice"]
    alice.certs.remove(phone_cert)
    alice.counter += 1
    w.call(alice.me(), "device_remove", device=phone.public.fingerprint.hex(), **alice.list_args())
    targets, owner = store.direct_targets(w.ids["bob"], phone.public.fingerprint)
    assert targets == {bob.device.public.fingerprint} and owner is None  # removed: refused as DEVICE_REMOVED
    targets, owner = store.direct_targets(w.ids["alice"], bob.device.public.fingerprint)
    assert targets == {alice.device.public.fingerprint} and owner == w.ids["bob"]
