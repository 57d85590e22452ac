"""Client device set-up, pairing and removal (client/devicesetup.py) against the real DeviceOps on SQLite."""

from __future__ import annotations

import json

import pytest

from securecomm.client import devicesetup as S
from securecomm.client.devicemail import Directory
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import UsageError
from securecomm.store.devicekeys import DeviceKeys
from tests.test_deviceops import World


@pytest.fixture()
def w(tmp_path):
    world = World(tmp_path)
    yield world
    world.store.close()


def _first(w: World, tag: str = "laptop"):
    me = PrivateIdentity.generate("x25519")
    keys = DeviceKeys(w.tmp / f"alice-{tag}", "x25519")
    w.call(w.caller("alice", me, True), "device_list_publish", **S.first_device("alice", me, tag, keys, w.now))
    return me, keys


def _directory(w, caller) -> Directory:
    return Directory.parse(w.call(caller, "device_list", user="alice").data)


def test_first_device_then_refill(w):
    me, keys = _first(w)
    caller = w.caller("alice", me)
    args = S.refill(me, keys, 0, None, w.now)
    assert len(args["one_time"]) == S.BATCH and "last_resort" in args
    assert w.call(caller, "prekeys_upload", **args).data == {"available": S.BATCH}
    assert S.refill(me, keys, S.BATCH, w.now, w.now) is None
    assert len(S.refill(me, keys, K.REFILL_BELOW - 1, w.now, w.now)["one_time"]) == S.BATCH - K.REFILL_BELOW + 1
    week = S.refill(me, keys, S.BATCH, w.now, w.now + K.LAST_RESORT_ROTATE_MS)
    assert week["one_time"] == [] and "last_resort" in week
    with pytest.raises(UsageError):
        S.first_device("alice", me, "again", keys, w.now)


def test_pair_then_remove(w):
    me, keys = _first(w)
    caller = w.caller("alice", me)
    phone = PrivateIdentity.generate("x25519")
    phone_keys = DeviceKeys(w.tmp / "alice-phone", "x25519")
    pending = w.caller("alice", phone, True)
    code = w.call(pending, "pair_start", name="phone").data["code"]
    shown = w.call(caller, "pair_lookup", code=code).data
    w.call(caller, "pair_approve", **S.approve("alice", me, keys, code, shown, _directory(w, caller), w.now))
    key, replaced = S.complete("alice", phone, phone_keys, w.call(pending, "pair_complete").data)
    assert key.seed == keys.user_key().seed and phone_keys.user_key().seed == key.seed
    assert replaced is None
    # the phone, now a listed device, removes the laptop
    phone_caller = w.caller("alice", phone)
    current = _directory(w, phone_caller)
    laptop_id = S.find_device(current, me.public.fingerprint[:6].hex())
    out = w.call(phone_caller, "device_remove", **S.remove("alice", phone_keys, current, laptop_id, w.now))
    assert out.close == [me.public.fingerprint]
    with pytest.raises(UsageError):
        S.remove("alice", phone_keys, _directory(w, phone_caller), phone.public.fingerprint, w.now)


def test_find_device_needs_an_unambiguous_prefix(w):
    me, _ = _first(w)
    current = _directory(w, w.caller("alice", me))
    with pytest.raises(UsageError):
        S.find_device(current, "abc")
    with pytest.raises(UsageError):
        S.find_device(current, "zzzzzzzzzzzz")


def test_uploads_split_to_fit_a_small_frame(w):
    from securecomm.client.devicelogin import upload_chunks

    me, keys = _first(w)
    caller = w.caller("alice", me)
    args = S.refill(me, keys, 0, None, w.now)
    chunks = upload_chunks(args, 4096)
    assert len(chunks) > 1 and all(len(json.dumps(c)) < 4096 for c in chunks)
    assert "last_resort" in chunks[-1] and all("last_resort" not in c for c in chunks[:-1])
    for chunk in chunks:  # ids rise from chunk to chunk, so none is refused as a replay
        w.call(caller, "prekeys_upload", **chunk)
    assert w.call(caller, "prekeys_status").data["available"] == S.BATCH
    assert len(upload_chunks(args, 1 << 20)) == 2


def test_login_ok_names_prekeys_only_for_a_server_that_serves_devices():
    from securecomm.wire import protocol as P

    old = P.LoginOk("alice", "user", None)
    assert b"prekeys" not in P.encode_event(old) and P.decode_payload(P.encode_event(old)[4:]).prekeys is None
    new = P.LoginOk("alice", "user", None, 0)
    assert P.decode_payload(P.encode_event(new)[4:]).prekeys == 0
