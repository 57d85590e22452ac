"""Forward secrecy of direct and room messages, end to end (issue 12, "The property, tested").

Alice sends Bob direct messages with `securecomm send --to bob` through a real
server (real TLS, real SQLite); the ciphertexts are recorded from the
server's database as they wait, before Bob acknowledges them. Bob reads them
with `securecomm inbox`. Then an attacker copies Bob's whole home folder and
the server's whole data folder and tries every private key found in them
(every key file, every file read as a raw prekey, every blob of every SQLite
database), through the project's own code paths (envelope v1 and v2 opening,
Bob's DeviceKeys as found) and through raw HPKE: no recorded message opens.

The reference, in the same test: the copy taken BEFORE Bob read them opens
every one (his one-time private prekeys were still there). On the old main
(version 1 envelopes sealed to Bob's long-term identity) the copy taken
AFTER reading opens them all too: tests/test_forward_secrecy.py::
test_reference_version_1_falls_to_a_stolen_home keeps that as a test.

Rooms, the same way (test_a_stolen_home_and_server_read_no_room_line_already_read): Alice and Bob in a
room through the project's client (Messenger, as `chat` runs it); the ROOM_KEY envelope carrying
Alice's sender key and her room lines are recorded from the frames her client writes. After Bob
read them, his whole home and the server's whole data folder open no ROOM_KEY envelope (so no
sender key) and decrypt no room line, with every sender key found on disk tried too. The copy of
Bob's home taken before the room opens the envelope and reads every line. On the code before
(integ at 5909330: ROOM_KEY sealed as a version-1 envelope to Bob's long-term identity) the copy
AFTER reading opens the envelope with Bob's identity key and reads every line.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from securecomm.client import devicemail as M
from securecomm.client.events import RoomText
from securecomm.crypto import envelope as E
from securecomm.crypto import prekeys as K
from securecomm.crypto import room as R
from securecomm.crypto.identity import PrivateIdentity
from securecomm.store.devicekeys import DeviceKeys
from securecomm.wire import protocol as P
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_forward_secrecy import KEM, _keys_on_disk, _quiet, _raw_hpke_opens

TEXTS = [f"forward secret {i}" for i in range(3)]


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    yield srv, homes
    srv.stop(signal.SIGKILL)


def _waiting(srv: ServerProc) -> list[bytes]:
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return [bytes(e) for (e,) in con.execute("SELECT envelope FROM mailbox ORDER BY id")]
    finally:
        con.close()


def _db_blobs(folder: Path) -> list[bytes]:
    """Every byte string stored in every SQLite database of the folder (WAL checkpointed by the copy's open)."""
    out: list[bytes] = []
    for path in folder.rglob("*.db"):
        con = sqlite3.connect(path)
        try:
            tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in con.execute(f'SELECT * FROM "{table}"'):
                    out += [bytes(v) if isinstance(v, (bytes, memoryview)) else v.encode()
                            for v in row if isinstance(v, (bytes, memoryview, str))]
        finally:
            con.close()
    return out


def _everything(stolen: list[Path]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"identities": [], "hpke": [], "prekeys": [], "sender_keys": [], "devices": []}
    for folder in stolen:
        for k, v in _keys_on_disk(folder).items():
            found[k] += v
        for blob in _db_blobs(folder):
            if b"PRIVATE KEY" in blob:
                with _quiet():
                    ident = PrivateIdentity.from_pem(blob)
                    found["identities"].append(ident)
                    found["hpke"].append((ident.kem, ident.hpke_key))
            for kind in (K.ONE_TIME, K.LAST_RESORT):
                with _quiet():
                    pk = K.PrivatePrekey.from_raw(kind, 1, KEM, blob, 0)
                    found["hpke"].append((KEM, pk.hpke_key))
        for state in folder.rglob("state.json"):  # a device-keys folder, opened as the client opens it
            found["devices"].append(DeviceKeys(state.parent, KEM))
    return found


def _attack(recorded: list[bytes], stolen: list[Path], alice: PrivateIdentity) -> list[str]:
    """Every recorded message the attacker opens, as text."""
    found = _everything(stolen)
    return [M.decode_body(body)[2].decode() for data in recorded
            if (body := _open_any(data, found, alice)) is not None]


def _open_any(data: bytes, found: dict[str, list[Any]], alice: PrivateIdentity) -> bytes | None:
    """The body of an envelope, by every way the attacker has: raw HPKE with every private key, the
    project's own opening (v1 and v2) with every identity, prekey and device-keys folder found."""
    body = _raw_hpke_opens(data, found["hpke"])
    body = body[32:] if body is not None else None  # the SHA-256 digest comes first (2.3)
    for ident in found["identities"]:
        with _quiet():
            body = body or E.open_envelope(data, ident, alice.public).body
        for keys in found["devices"]:
            with _quiet():
                body = body or K.open_v2(data, ident, alice.public, keys.get).body
        with _quiet():
            body = body or K.open_v2(data, ident, alice.public,
                                     lambda kind, pid: next((p for p in found["prekeys"]
                                                             if (p.kind, p.prekey_id) == (kind, pid)), None)).body
    return body


def _alice(homes: dict[str, Path]) -> PrivateIdentity:
    return PrivateIdentity.from_pem((homes["alice"] / "identities" / "default.key").read_bytes())


def test_a_stolen_home_and_server_open_no_message_already_read(world, tmp_path):
    srv, homes = world
    for text in TEXTS:
        r = sc(homes["alice"], "send", "--to", "bob", text)
        assert r.returncode == 0, r.stderr
    recorded = _waiting(srv)
    assert len(recorded) == len(TEXTS)
    for data in recorded:  # version 2, each sealed to a one-time prekey of Bob's device
        env = K.parse_v2(data)
        assert env.header.key_kind == K.ONE_TIME and env.header.prekey_id >= 1
    before = tmp_path / "stolen-before"
    shutil.copytree(homes["bob"], before / "home")
    shutil.copytree(srv.home, before / "srv")
    held = len(list((homes["bob"] / "devices" / "default" / "prekeys").iterdir()))

    r = sc(homes["bob"], "inbox", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["body"] for line in r.stdout.splitlines()] == TEXTS
    assert _waiting(srv) == []  # acknowledged: the server dropped its copies
    # the three one-time private keys are gone, and only they (97 left on the server: no refill yet)
    gone = {f"1-{K.parse_v2(d).header.prekey_id}.key" for d in recorded}
    left = {p.name for p in (homes["bob"] / "devices" / "default" / "prekeys").iterdir()}
    assert not gone & left and len(left) == held - len(TEXTS)

    after = tmp_path / "stolen-after"
    shutil.copytree(homes["bob"], after / "home")
    shutil.copytree(srv.home, after / "srv")
    alice = _alice(homes)
    assert _attack(recorded, [after / "home", after / "srv"], alice) == []
    # the reference, same run: the copy taken before Bob read them opens every one
    assert sorted(_attack(recorded, [before / "home", before / "srv"], alice)) == sorted(TEXTS)


def _record(m: Any, frames: list[P.Event]) -> None:
    """Keep a copy of every ROOM_KEY and ROOM_SEND frame a Messenger's client writes (what crosses the server)."""
    write = m.client._write

    def recording(ev: P.Event) -> None:
        if isinstance(ev, (P.RoomKey, P.RoomSend)):
            frames.append(ev)
        write(ev)

    m.client._write = recording


def _room_attack(keys: list[bytes], lines: list[bytes], stolen: list[Path], alice: PrivateIdentity) -> list[bytes]:
    """Every recorded room line the attacker decrypts, with the sender keys it opens or finds on disk."""
    found = _everything(stolen)
    sender_keys = list(found["sender_keys"])
    for data in keys:
        body = _open_any(data, found, alice)
        if body is not None:
            with _quiet():
                sender_keys.append(R.SenderKey.decode_with_writer(body)[2])  # SCK2 (or SCK1)
    read = []
    for payload in lines:
        for key in sender_keys:
            copy = R.SenderKey(key.key_id, key.chain_key, key.iteration)  # each try from the key as found
            with _quiet():
                read.append(R.decrypt("fs", payload, alice.public, copy).body)
                break
    return read


def test_a_stolen_home_and_server_read_no_room_line_already_read(world, tmp_path):
    from tests.test_messaging import _close, _messenger, _until

    srv, homes = world
    before = tmp_path / "stolen-before"  # Bob's one-time private prekeys, the one claimed for the room key too
    shutil.copytree(homes["bob"], before / "home")
    lines = [f"room line {i}".encode() for i in range(3)]
    frames: list[P.Event] = []

    async def go() -> None:
        ev_a: list[Any] = []
        ev_b: list[Any] = []
        a, b = await _messenger(homes["alice"], ev_a), await _messenger(homes["bob"], ev_b)
        _record(a, frames)
        try:
            await a.join("fs")
            await b.join("fs")
            await _until(lambda: "bob" in a.rooms["fs"].keys and "alice" in b.rooms["fs"].keys, 20)
            for line in lines:
                await a.send_room("fs", line)
            await _until(lambda: [e.body for e in ev_b if isinstance(e, RoomText)] == lines, 20)
        finally:
            await _close(a, b)

    asyncio.run(go())
    keys = [f.envelope for f in frames if isinstance(f, P.RoomKey) and f.user == "bob"]
    payloads = [f.payload for f in frames if isinstance(f, P.RoomSend)]
    assert len(keys) == 1 and len(payloads) == len(lines)
    env = K.parse_v2(keys[0])  # version 2, sealed to a one-time prekey of Bob's device
    assert env.header.key_kind == K.ONE_TIME
    assert not (homes["bob"] / "devices" / "default" / "prekeys" / f"1-{env.header.prekey_id}.key").exists()
    shutil.copytree(srv.home, before / "srv")
    after = tmp_path / "stolen-after"
    shutil.copytree(homes["bob"], after / "home")
    shutil.copytree(srv.home, after / "srv")
    alice = _alice(homes)
    assert _room_attack(keys, payloads, [after / "home", after / "srv"], alice) == []
    # the reference, same run: the copy taken before the room opens the key and reads every line
    assert _room_attack(keys, payloads, [before / "home", before / "srv"], alice) == lines


def test_a_forged_message_burns_no_prekey_and_is_not_shown(world):
    """A message whose signature fails never reaches the prekey (6.5): the key stays, nothing is shown."""
    srv, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "genuine").returncode == 0
    (data,) = _waiting(srv)
    forged = bytearray(data)
    forged[-1] ^= 1
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        con.execute("UPDATE mailbox SET envelope = ?", (bytes(forged),))
        con.commit()
    finally:
        con.close()
    pid = K.parse_v2(data).header.prekey_id
    key_file = homes["bob"] / "devices" / "default" / "prekeys" / f"1-{pid}.key"
    assert key_file.exists()
    r = sc(homes["bob"], "inbox", "--json")
    assert r.returncode != 0 and r.stdout == b""
    assert b"REJECTED" in r.stderr
    assert key_file.exists()  # a forgery burns nothing


def test_version_1_mail_is_refused_by_name(world):
    """A version-1 envelope reaching a version-2 device is refused, never opened with the long-term key."""
    srv, homes = world
    assert sc(homes["alice"], "send", "--to", "bob", "genuine").returncode == 0
    alice = _alice(homes)
    bob = PrivateIdentity.from_pem((homes["bob"] / "identities" / "default.key").read_bytes())
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        con.execute("UPDATE mailbox SET envelope = ?", (E.seal(b"old style", alice, bob.public),))
        con.commit()
    finally:
        con.close()
    r = sc(homes["bob"], "inbox", "--json")
    assert r.returncode != 0 and r.stdout == b""
    assert b"version 1 envelope refused" in r.stderr
    assert b"mail from before the upgrade: ask alice to send it again" in r.stderr  # what the user sees (6.13)


def test_last_resort_message_says_so_and_its_key_stays(world):
    """With no one-time prekey left, the message is sealed to the last-resort prekey (key_kind 2), and
    the reader is told: "sealed without a one-time key" (6.6); that key is kept (it serves others)."""
    srv, homes = world
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        con.execute("DELETE FROM prekeys WHERE kind = 1")  # as if others had claimed them all
        con.commit()
    finally:
        con.close()
    assert sc(homes["alice"], "send", "--to", "bob", "no one-time key").returncode == 0
    (data,) = _waiting(srv)
    env = K.parse_v2(data)
    assert env.header.key_kind == K.LAST_RESORT
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 0, r.stderr
    assert b"(sealed without a one-time key)" in r.stdout and b"no one-time key" in r.stdout
    assert (homes["bob"] / "devices" / "default" / "prekeys" / f"2-{env.header.prekey_id}.key").exists()


def test_inbox_refills_one_time_prekeys_when_few_are_left(world):
    """Under 20 one-time prekeys on the server, the reader uploads new ones up to 100 (6.5, 6.13)."""
    srv, homes = world
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        con.execute("DELETE FROM prekeys WHERE kind = 1 AND prekey_id > 21")  # 21 left each, as if claimed
        con.commit()
    finally:
        con.close()
    for text in TEXTS:  # 3 more claimed: 18 left
        assert sc(homes["alice"], "send", "--to", "bob", text).returncode == 0
    r = sc(homes["bob"], "inbox", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["body"] for line in r.stdout.splitlines()] == TEXTS
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        per_device = con.execute("SELECT COUNT(*) FROM prekeys WHERE kind = 1 GROUP BY device_id").fetchall()
        assert sorted(n for (n,) in per_device) == [21, 100]  # alice's untouched, bob's refilled from 18
    finally:
        con.close()
