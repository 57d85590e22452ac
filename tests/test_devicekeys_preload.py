"""Private prekeys read ahead into memory (store/devicekeys.py preload, docs/PROTOCOL.md 6.13): the next
message opens without reading and expanding its key, and memory never outlives the file: a key
erased (here, or by another session of the same device) is not found, so it opens nothing twice."""

from __future__ import annotations

import pytest

from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import ReplayedPrekeyError
from securecomm.store.devicekeys import DeviceKeys


def test_preload_reads_the_lowest_ids_and_an_erased_key_is_gone_from_memory_too(tmp_path):
    me, sender = PrivateIdentity.generate("mlkem768-x25519"), PrivateIdentity.generate("x25519")
    keys = DeviceKeys(tmp_path / "device", me.kem)
    signed = keys.new_one_time(me, 6)
    assert keys.preload(4) == 4 and keys.preload(4) == 0  # the four lowest, read once
    other_session = DeviceKeys(tmp_path / "device", me.kem)
    env = K.seal_v2(b"one", sender, me.public, signed[0])
    assert other_session.open(env, me, sender.public).body == b"one"  # opened and erased over there
    assert keys.get(K.ONE_TIME, signed[0].prekey_id) is None  # preloaded here, but its file is gone
    with pytest.raises(ReplayedPrekeyError):
        keys.open(env, me, sender.public)
    env2 = K.seal_v2(b"two", sender, me.public, signed[1])
    assert keys.get(K.ONE_TIME, signed[1].prekey_id) is keys._loaded[(K.ONE_TIME, signed[1].prekey_id)]
    assert keys.open(env2, me, sender.public).body == b"two"
    assert (K.ONE_TIME, signed[1].prekey_id) not in keys._loaded  # erased: dropped from memory with the file
    assert not (tmp_path / "device" / "prekeys" / f"1-{signed[1].prekey_id}.key").exists()
    # the four lowest as far as this session knows: 1 (found gone now: dropped), 3 and 4 (loaded), 5 (read);
    # then 3-6, and 6 is read
    assert keys.preload(4) == 1 and keys.preload(4) == 1
    assert sorted(pid for _, pid in keys._loaded) == [p.prekey_id for p in signed[2:]]


def test_a_wiped_key_is_zeros_on_disk_before_the_ack_and_unlinked_after(tmp_path):
    """6.5: before the ACK the key's file holds only zeros (synced); the file goes after the ACK. A file of
    zeros (a crash between the two) is no key, for this session and any other."""
    me, sender = PrivateIdentity.generate("mlkem768-x25519"), PrivateIdentity.generate("x25519")
    keys = DeviceKeys(tmp_path / "device", me.kem)
    signed = keys.new_one_time(me, 3)
    keys.preload()
    env = K.seal_v2(b"one", sender, me.public, signed[0])
    tried: list[K.PrivatePrekey] = []
    assert K.open_v2(env, me, lambda _fp: sender.public, keys.get, on_tried=tried.append).body == b"one"
    keys.wipe(tried[0])
    path = tmp_path / "device" / "prekeys" / f"1-{signed[0].prekey_id}.key"
    assert path.read_bytes() == bytes(len(path.read_bytes())) and len(path.read_bytes()) == 96  # zeros, same size
    assert keys.get(K.ONE_TIME, signed[0].prekey_id) is None
    with pytest.raises(ReplayedPrekeyError):
        keys.open(env, me, sender.public)
    keys.after_ack()
    assert not path.exists()
    # a crash after the wipe, before the unlink: another session finds zeros, and no key
    second = tmp_path / "device" / "prekeys" / f"1-{signed[1].prekey_id}.key"
    second.write_bytes(bytes(96))
    later = DeviceKeys(tmp_path / "device", me.kem)
    assert later.get(K.ONE_TIME, signed[1].prekey_id) is None and not second.exists()
    assert later.preload() == 1  # only the third key is left to read
