"""The server's device and prekey tables (securecomm/store/devices.py) on a real SQLite store.

Signatures are checked before the store is called; these tests check what
the store itself must guarantee: counters only grow, removed devices lose
their prekeys, a one-time prekey is handed out once, ids are never reused,
pairing codes are single-use and expire.
"""

from __future__ import annotations

import threading

import pytest

from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import (
    FormatError,
    PairingExpiredError,
    PairingUnknownError,
    PairingUsedError,
    ReplayedPrekeyError,
    StaleDeviceListError,
)
from securecomm.store.db import Store
from securecomm.store.devices import DeviceStore, RaceLost


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def opener(request, tmp_path):
    """Opens another connection to the store under test (a second relay would have its own): SQLite in
    a file, or PostgreSQL in a fresh database (tests/cluster.py), as in tests/test_store.py."""
    opened: list = []
    if request.param == "sqlite":
        def make():
            return Store(tmp_path / "server.db")
    else:
        from securecomm.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")
        PostgresStore(url, migrate=True).close()

        def make():
            return PostgresStore(url)

    def tracked():
        opened.append(make())
        return opened[-1]

    yield tracked
    for s in opened:
        s.close()


@pytest.fixture()
def world(opener):
    store = opener()
    devices = DeviceStore(store.device_sql())
    alice = store.add_user("alice", "x")
    bob = store.add_user("bob", "x")
    yield store, devices, alice.id, bob.id


def _account(n: int, key: D.UserKey | None = None, user: str = "alice"):
    key = key or D.UserKey.generate()
    ids = [PrivateIdentity.generate("x25519") for _ in range(n)]
    certs = [D.DeviceCert.sign(key, user, d.public, f"d{i}", i) for i, d in enumerate(ids)]
    return key, ids, certs


def _publish(devices, uid, key, certs, counter, user="alice", **kw):
    dlist = D.DeviceList.sign(key, user, counter, 0, [c.device_id for c in certs])
    return devices.publish_list(uid, dlist, certs, **kw)


def test_publish_then_read_back(world):
    _, devices, alice, _ = world
    key, _, certs = _account(2)
    assert _publish(devices, alice, key, certs, 1) == []
    user_key, raw_list, got = devices.current(alice)
    assert user_key == key.public.raw
    D.DeviceList.decode(raw_list).verify("alice", key.public)
    assert sorted(got) == sorted(c.encode() for c in certs)


def test_counter_must_grow(world):
    _, devices, alice, _ = world
    key, _, certs = _account(1)
    _publish(devices, alice, key, certs, 3)
    with pytest.raises(StaleDeviceListError):
        _publish(devices, alice, key, certs, 3)
    with pytest.raises(StaleDeviceListError):
        _publish(devices, alice, key, certs, 2)


def test_new_user_key_needs_reset(world):
    _, devices, alice, _ = world
    key, _, certs = _account(1)
    _publish(devices, alice, key, certs, 5)
    key2, _, certs2 = _account(1)
    with pytest.raises(StaleDeviceListError):
        _publish(devices, alice, key2, certs2, 1)
    assert _publish(devices, alice, key2, certs2, 1, reset=True) == [certs[0].device_id]
    assert devices.current(alice)[0] == key2.public.raw


def test_removed_device_loses_its_prekeys(world):
    _, devices, alice, _ = world
    key, ids, certs = _account(2)
    _publish(devices, alice, key, certs, 1)
    batch = [p.sign(ids[1]) for p in K.generate_batch(ids[1], 1, 5)]
    assert devices.upload_prekeys(certs[1].device_id, batch, None) == 5
    assert _publish(devices, alice, key, certs[:1], 2) == [certs[1].device_id]
    assert devices.available(certs[1].device_id) == 0
    assert devices.device_user(certs[1].device_id) is None


def test_every_listed_device_needs_a_certificate(world):
    _, devices, alice, _ = world
    key, _, certs = _account(2)
    dlist = D.DeviceList.sign(key, "alice", 1, 0, [c.device_id for c in certs])
    with pytest.raises(FormatError):
        devices.publish_list(alice, dlist, certs[:1])


def test_a_device_of_another_account_is_refused(world):
    _, devices, alice, bob = world
    key, ids, certs = _account(1)
    _publish(devices, alice, key, certs, 1)
    bkey = D.UserKey.generate()
    stolen = D.DeviceCert.sign(bkey, "bob", ids[0].public, "mine now", 0)
    with pytest.raises(FormatError):
        _publish(devices, bob, bkey, [stolen], 1, user="bob")
    assert devices.device_user(certs[0].device_id) == alice


def test_claim_hands_each_one_time_prekey_out_once(world):
    _, devices, alice, _ = world
    key, ids, certs = _account(1)
    _publish(devices, alice, key, certs, 1)
    dev = certs[0].device_id
    one_time = [p.sign(ids[0]) for p in K.generate_batch(ids[0], 1, 3)]
    last = K.PrivatePrekey.generate(K.LAST_RESORT, 4, "x25519").sign(ids[0])
    devices.upload_prekeys(dev, one_time, last)
    got = [devices.claim(alice)[0] for _ in range(5)]
    assert [K.Prekey.decode(c.prekey).prekey_id for c in got] == [1, 2, 3, 4, 4]
    assert [c.kind for c in got] == [1, 1, 1, 2, 2]
    assert devices.available(dev) == 0


def test_concurrent_claims_never_share_a_prekey(world, opener):
    _, devices, alice, _ = world
    key, ids, certs = _account(1)
    _publish(devices, alice, key, certs, 1)
    devices.upload_prekeys(certs[0].device_id, [p.sign(ids[0]) for p in K.generate_batch(ids[0], 1, 40)], None)
    seen: list[int] = []
    lock = threading.Lock()

    stores = [opener() for _ in range(4)]  # a connection per thread, as a second relay would have

    def worker(own) -> None:
        for _ in range(10):
            while True:
                try:
                    claimed = DeviceStore(own.device_sql()).claim(alice)
                    break
                except RaceLost:  # PostgreSQL: another claim won; this one took nothing (the relay retries)
                    continue
            for c in claimed:
                with lock:
                    seen.append(K.Prekey.decode(c.prekey).prekey_id)

    threads = [threading.Thread(target=worker, args=(own,)) for own in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == list(range(1, 41))


def test_replayed_prekey_id_refused_and_nothing_stored(world):
    _, devices, alice, _ = world
    key, ids, certs = _account(1)
    _publish(devices, alice, key, certs, 1)
    dev = certs[0].device_id
    batch = [p.sign(ids[0]) for p in K.generate_batch(ids[0], 1, 3)]
    devices.upload_prekeys(dev, batch, None)
    devices.claim(alice)  # id 1 handed out and deleted: uploading it again is still a replay
    with pytest.raises(ReplayedPrekeyError):
        devices.upload_prekeys(dev, [batch[0]], None)
    with pytest.raises(ReplayedPrekeyError):
        devices.upload_prekeys(dev, [p.sign(ids[0]) for p in K.generate_batch(ids[0], 3, 2)], None)
    assert devices.available(dev) == 2


def test_held_limit(world):
    _, devices, alice, _ = world
    key, ids, certs = _account(1)
    _publish(devices, alice, key, certs, 1)
    dev = certs[0].device_id
    devices.upload_prekeys(dev, [p.sign(ids[0]) for p in K.generate_batch(ids[0], 1, 100)], None)
    devices.upload_prekeys(dev, [p.sign(ids[0]) for p in K.generate_batch(ids[0], 101, 100)], None)
    with pytest.raises(FormatError):
        devices.upload_prekeys(dev, [K.PrivatePrekey.generate(K.ONE_TIME, 201, "x25519").sign(ids[0])], None)


def test_claim_skips_the_claimants_own_device(world):
    _, devices, alice, _ = world
    key, ids, certs = _account(2)
    _publish(devices, alice, key, certs, 1)
    for i in range(2):
        devices.upload_prekeys(certs[i].device_id, [K.generate_batch(ids[i], 1, 1)[0].sign(ids[i])], None)
    got = devices.claim(alice, skip=certs[0].device_id)
    assert [c.cert for c in got] == [certs[1].encode()]


def test_pairing_single_use_and_expiry(world):
    _, devices, alice, bob = world
    code = D.new_pairing_code()
    digest = D.code_digest("alice", code)
    devices.start_pairing(alice, digest, b"\x01" * 32, b"identity", "phone", 1000)
    with pytest.raises(PairingUnknownError):
        devices.pending(bob, digest, 0)  # a code of another account
    assert devices.pending(alice, digest, 999).name == "phone"
    with pytest.raises(PairingExpiredError):
        devices.approve(alice, digest, 1000, b"approval")
    devices.approve(alice, digest, 999, b"approval")
    with pytest.raises(PairingUsedError):
        devices.approve(alice, digest, 999, b"again")
    assert devices.approval(b"\x01" * 32) == b"approval"


def test_removing_the_account_removes_its_devices(world):
    store, devices, alice, _ = world
    key, ids, certs = _account(1)
    _publish(devices, alice, key, certs, 1)
    devices.upload_prekeys(certs[0].device_id, [K.generate_batch(ids[0], 1, 1)[0].sign(ids[0])], None)
    store.remove_user("alice")
    assert devices.current(alice) is None and devices.available(certs[0].device_id) == 0
