"""Forward secrecy, as a property of what a device leaves on disk (docs/PROTOCOL.md 6.1, 6.5).

Bob's device keeps its identity and its prekeys in a home folder, as the
client does. Alice sends direct messages and a room sender key sealed to his
one-time prekeys, and room messages under that sender key; we record every
ciphertext. Bob opens them all. Then an attacker copies Bob's whole home
folder and tries every private key found in it, through our own code paths
and raw HPKE: every recorded message must stay closed.

Reference (kept as a test, not only prose): the same attack against today's
version-1 envelopes, sealed to Bob's long-term identity, opens every direct
message and the room sender key, and through it the room messages.

This is the crypto core of the issue's end-to-end test; the version over a
real server (ciphertexts taken from the server's database and its data
folder copied as well) needs the server wiring (docs/PROTOCOL.md 6.12).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hpke

from securecomm.crypto import envelope as E
from securecomm.crypto import identity as I
from securecomm.crypto import prekeys as K
from securecomm.crypto import room as R
from securecomm.crypto.identity import KEMS, PrivateIdentity
from securecomm.errors import SecurecommError
from securecomm.store.devicekeys import DeviceKeys

ROOM = "lobby"
KEM = "mlkem768-x25519"


def _bob_home(tmp_path: Path) -> tuple[Path, PrivateIdentity, DeviceKeys]:
    home = tmp_path / "bob-home"
    bob = PrivateIdentity.generate(KEM)
    I.save(bob, home / "identities" / "default.key", home / "identities" / "default.pub")
    keys = DeviceKeys(home / "device", KEM)
    return home, bob, keys


def _record(alice: PrivateIdentity, bob: PrivateIdentity, prekeys: list[K.Prekey] | None) -> dict[str, Any]:
    """What crosses the server: direct messages, one sender-key distribution, room messages."""
    seal = (lambda body, i: E.seal(body, alice, bob.public)) if prekeys is None else \
        (lambda body, i: K.seal_v2(body, alice, bob.public, prekeys[i]))
    key = R.SenderKey.generate()
    distribution = seal(key.encode(ROOM), 3)
    sending = R.SenderKey(key.key_id, key.chain_key, key.iteration)
    return {"direct": [seal(f"secret {i}".encode(), i) for i in range(3)], "sender_key": distribution,
            "room": [R.encrypt(ROOM, f"room secret {i}".encode(), alice, sending) for i in range(3)]}


def _bob_reads(rec: dict[str, Any], bob: PrivateIdentity, alice: PrivateIdentity, keys: DeviceKeys | None,
               home: Path) -> None:
    def open_(data: bytes) -> bytes:
        return (E.open_envelope(data, bob, alice.public) if keys is None else keys.open(data, bob, alice.public)).body

    assert [open_(d) for d in rec["direct"]] == [f"secret {i}".encode() for i in range(3)]
    _, sender_key = R.SenderKey.decode(open_(rec["sender_key"]))
    for i, payload in enumerate(rec["room"]):
        assert R.decrypt(ROOM, payload, alice.public, sender_key).body == f"room secret {i}".encode()
    # the client keeps the ratcheted sender key for the messages still to come
    (home / "rooms").mkdir(exist_ok=True)
    (home / "rooms" / "lobby-alice.skey").write_bytes(sender_key.encode(ROOM))


# -- the attacker: every key on disk, every way we know to use it ----------------------------------
def _keys_on_disk(home: Path) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"identities": [], "hpke": [], "sender_keys": [], "prekeys": []}
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY" in data:
            with _quiet():
                ident = PrivateIdentity.from_pem(data)
                found["identities"].append(ident)
                found["hpke"].append((ident.kem, ident.hpke_key))
        with _quiet():
            found["sender_keys"].append(R.SenderKey.decode(data)[1])
        for kind in (K.ONE_TIME, K.LAST_RESORT):
            with _quiet():
                pk = K.PrivatePrekey.from_raw(kind, int(path.stem.split("-")[-1]), KEM, data, 0)
                found["prekeys"].append(pk)
                found["hpke"].append((KEM, pk.hpke_key))
    return found


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, (SecurecommError, ValueError, TypeError))


def _raw_hpke_opens(data: bytes, hpke_keys: list[tuple[str, Any]]) -> bytes | None:
    """HPKE open with every key, both envelope versions' header sizes and labels."""
    for header_size, label, lengths in ((E.HEADER_SIZE, E.INFO_LABEL, 6), (K.HEADER_SIZE, K.INFO_LABEL, 6)):
        for kem, key in hpke_keys:
            suite = hpke.Suite(KEMS[kem][2], hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
            try:
                return suite.decrypt(data[header_size + lengths : -64], key, info=label + data[:header_size])
            except Exception:  # noqa: S112 - the attacker tries everything
                continue
    return None


def _attack(rec: dict[str, Any], stolen: Path, alice: PrivateIdentity) -> list[bytes]:
    """Everything the attacker recovers from the recorded ciphertexts."""
    keys = _keys_on_disk(stolen)
    opened: list[bytes] = []
    for data in [*rec["direct"], rec["sender_key"]]:
        body = _raw_hpke_opens(data, keys["hpke"])
        for ident in keys["identities"]:
            with _quiet():
                body = body or E.open_envelope(data, ident, alice.public).body
            with _quiet():
                body = body or K.open_v2(data, ident, alice.public, lambda k, i: _any(keys["prekeys"], k, i),
                                         require_prekey=False).body
        if body is not None:
            opened.append(body)
    sender_keys = list(keys["sender_keys"])
    for body in opened:
        with _quiet():
            sender_keys.append(R.SenderKey.decode(body[32:] if body[:4] != b"SCK1" else body)[1])
    for payload in rec["room"]:
        for sk in sender_keys:
            with _quiet():
                opened.append(R.decrypt(ROOM, payload, alice.public, R.SenderKey(sk.key_id, sk.chain_key,
                                                                                 sk.iteration)).body)
                break
    return opened


def _any(found: list[K.PrivatePrekey], kind: int, pid: int) -> K.PrivatePrekey | None:
    return next((p for p in found if p.kind == kind and p.prekey_id == pid), None)


# -- the tests --------------------------------------------------------------------------------------
def test_a_stolen_home_opens_no_recorded_message(tmp_path):
    alice = PrivateIdentity.generate("x25519")
    home, bob, keys = _bob_home(tmp_path)
    signed = keys.new_one_time(bob, 6)
    keys.new_last_resort(bob, 0)
    rec = _record(alice, bob, signed)
    _bob_reads(rec, bob, alice, keys, home)
    stolen = tmp_path / "stolen"
    shutil.copytree(home, stolen)
    found = _keys_on_disk(stolen)
    assert len(found["identities"]) == 1 and found["sender_keys"]  # the attacker does find keys...
    assert {p.prekey_id for p in found["prekeys"]} == {5, 6, 7}  # ...the unused ones and the last resort
    assert _attack(rec, stolen, alice) == []  # ...and opens nothing recorded


def test_reference_version_1_falls_to_a_stolen_home(tmp_path):
    """Today's envelopes: sealed to the long-term identity, so the stolen home reads everything."""
    alice = PrivateIdentity.generate("x25519")
    home, bob, _ = _bob_home(tmp_path)
    rec = _record(alice, bob, None)
    _bob_reads(rec, bob, alice, None, home)
    stolen = tmp_path / "stolen"
    shutil.copytree(home, stolen)
    opened = _attack(rec, stolen, alice)
    assert [f"secret {i}".encode() for i in range(3)] == [b[32:] for b in opened[:3]]
    assert [f"room secret {i}".encode() for i in range(3)] == opened[-3:]


def test_unopened_mail_is_not_protected(tmp_path):
    """The limit the README states: what the device has not opened yet, a thief opens."""
    alice = PrivateIdentity.generate("x25519")
    home, bob, keys = _bob_home(tmp_path)
    signed = keys.new_one_time(bob, 4)
    rec = _record(alice, bob, signed)
    stolen = tmp_path / "stolen"
    shutil.copytree(home, stolen)
    assert len(_attack(rec, stolen, alice)) >= 3


def test_erased_key_file_is_gone_from_the_folder(tmp_path):
    alice = PrivateIdentity.generate("x25519")
    _, bob, keys = _bob_home(tmp_path)
    signed = keys.new_one_time(bob, 2)
    before = keys.held()
    keys.open(K.seal_v2(b"x", alice, bob.public, signed[0]), bob, alice.public)
    assert len(keys.held()) == len(before) - 1 and keys.get(K.ONE_TIME, signed[0].prekey_id) is None


def test_prekey_ids_survive_a_restart_and_files_are_private(tmp_path):
    _, bob, keys = _bob_home(tmp_path)
    first = keys.new_one_time(bob, 3)
    again = DeviceKeys(keys.folder, KEM).new_one_time(bob, 2)
    assert [p.prekey_id for p in first + again] == [1, 2, 3, 4, 5]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.held())
    assert keys.folder.stat().st_mode & 0o777 == 0o700


def test_retired_last_resort_kept_for_its_grace_period(tmp_path):
    _, bob, keys = _bob_home(tmp_path)
    old = keys.new_last_resort(bob, 0)
    keys.new_last_resort(bob, 1000)
    assert keys.prune(1000 + K.LAST_RESORT_GRACE_MS - 1) == 0 and keys.get(K.LAST_RESORT, old.prekey_id)
    assert keys.prune(1000 + K.LAST_RESORT_GRACE_MS) == 1 and keys.get(K.LAST_RESORT, old.prekey_id) is None


def test_one_time_keys_handed_out_and_never_used_are_erased_after_the_mailbox_lifetime(tmp_path):
    """PROTOCOL.md 6.5: before this, no one-time private key was ever erased unless a message used it,
    so every key a claimant took and never used stayed on the device for good."""
    _, bob, keys = _bob_home(tmp_path)
    keys.new_one_time(bob, 10)  # ids 1..10
    assert keys.forget_handed_out(6, 0) == 0  # the server holds 6..10: 1..5 were handed out, seen now
    assert sorted(keys.state["handed_out"]) == ["1", "2", "3", "4", "5"]
    assert keys.forget_handed_out(8, K.UNUSED_ONE_TIME_MS - 1) == 0  # 6, 7 seen later: their own clock
    assert keys.forget_handed_out(8, K.UNUSED_ONE_TIME_MS) == 5
    assert [keys.get(K.ONE_TIME, i) is None for i in range(1, 11)] == [True] * 5 + [False] * 5
    assert sorted(DeviceKeys(keys.folder, KEM).state["handed_out"]) == ["6", "7"]  # saved
    # a server restored from a backup holds 6 again: no longer counted
    assert keys.forget_handed_out(6, 2 * K.UNUSED_ONE_TIME_MS) == 0 and keys.state["handed_out"] == {}
    assert keys.get(K.ONE_TIME, 6) is not None


def test_a_server_that_says_all_were_handed_out_cannot_make_a_device_keep_every_key(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "HANDED_OUT_KEPT", 3)
    _, bob, keys = _bob_home(tmp_path)
    keys.new_one_time(bob, 5)
    keys.preload()
    assert keys.forget_handed_out(1 << 32, 0) == 2  # all five out, the two lowest erased at once
    assert [keys.get(K.ONE_TIME, i) is None for i in range(1, 6)] == [True, True, False, False, False]
    assert sorted(keys.state["handed_out"]) == ["3", "4", "5"]
    assert keys._one_time_ids == [3, 4, 5] and set(keys._loaded) == {(K.ONE_TIME, 3), (K.ONE_TIME, 4)}


def test_unused_keys_are_kept_as_long_as_the_server_keeps_mail(tmp_path):
    """The re-check: with --mailbox-ttl 90d (or 0, for ever) mail held back for a changed key could wait
    longer than the 30 days a handed-out key was kept, and became unreadable once trusted."""
    from securecomm.client.connection import Client
    from securecomm.client.devicelogin import unused_key_lifetime
    from securecomm.wire import protocol as P

    def lifetime(ttl: int | None) -> int | None:
        client = Client("127.0.0.1", 1, None)  # type: ignore[arg-type]  # never connects
        client.server_hello = P.ServerHello(2, "x", bytes(32), mailbox_ttl=ttl)
        decoded = P.decode_payload(P.encode_event(client.server_hello)[4:])
        assert isinstance(decoded, P.ServerHello) and decoded.mailbox_ttl == ttl
        return unused_key_lifetime(client)

    day = K.DAY_MS
    assert lifetime(None) == lifetime(7 * 86400) == lifetime(-1) == K.UNUSED_ONE_TIME_MS
    assert lifetime(90 * 86400) == 90 * day and lifetime(0) is None
    _, bob, keys = _bob_home(tmp_path)
    keys.new_one_time(bob, 3)
    assert keys.forget_handed_out(4, 0, 90 * day) == 0
    assert keys.forget_handed_out(4, 89 * day, 90 * day) == 0 and keys.forget_handed_out(4, 90 * day, 90 * day) == 3
    keys.new_one_time(bob, 2)
    assert keys.forget_handed_out(100, 0, None) == 0 and keys.forget_handed_out(100, 10**6 * day, None) == 0
