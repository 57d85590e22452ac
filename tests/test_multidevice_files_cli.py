"""A file sent to an account with several devices (issues 12 and 16, docs/PROTOCOL.md 2.6.1 and 4.4), through
the CLI: real server, real TLS, real SQLite, devices paired with `user login` + `devices approve`.

Before this, the stream of a version-2 file was HPKE-sealed to ONE device's long-term identity: on the
other device `fetch ID` exited 6 ("stream is addressed to another identity"), the first device's
file_done deleted the only copy, and the server's copy plus that device's long-term key opened the
file (no forward secrecy). Run against that code (the CLI of main before this branch), the first two
tests and the last fail: `test_every_device_of_the_recipient_fetches_the_same_file` at the phone's
fetch (exit 6, "stream is addressed to another identity"), the sender's other device saved the
notice as fetchable, and the recorded stream was a version-1 one, sealed to one device's long-term
key, which the stolen copy still holds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from securecomm.crypto import prekeys as K
from securecomm.crypto import stream as S
from securecomm.crypto.identity import PrivateIdentity
from securecomm.wire.files import FileNotice
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_forward_secrecy import _quiet
from tests.test_forward_secrecy_cli import _attack, _everything
from tests.test_multidevice_cli import pair_second_device

SIZE = 300_000  # several stream chunks and FILE_PUTs


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "carol"))
    homes["carol2"] = tmp_path / "carol-phone"
    pair_second_device(srv, homes["carol"], homes["carol2"], "carol")
    homes["alice2"] = tmp_path / "alice-phone"
    pair_second_device(srv, homes["alice"], homes["alice2"], "alice")
    yield srv, homes, tmp_path
    srv.stop(signal.SIGKILL)


def _send(homes: dict[str, Path], tmp: Path, body: bytes) -> str:
    src = tmp / "plan.bin"
    src.write_bytes(body)
    r = sc(homes["alice"], "send", "--to", "carol", "--file", str(src), "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["file_id"])


def _inbox(home: Path) -> list[dict]:
    r = sc(home, "inbox", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _stored(srv: ServerProc, file_id: str) -> Path:
    return srv.home / "files" / file_id


def test_every_device_of_the_recipient_fetches_the_same_file(world):
    srv, homes, tmp = world
    body = os.urandom(SIZE)
    file_id = _send(homes, tmp, body)
    for home in (homes["carol"], homes["carol2"]):
        (shown,) = _inbox(home)
        assert shown["from"] == "alice" and shown["file"]["id"] == file_id
    got = {}
    for n, device in enumerate(("carol2", "carol")):  # the phone first: the old code sealed to the laptop
        out = tmp / f"got-{device}.bin"
        r = sc(homes[device], "fetch", file_id, "-o", str(out))
        assert r.returncode == 0, r.stderr  # the old code: 6, "stream is addressed to another identity"
        got[device] = out.read_bytes()
        # the server keeps its one copy until the last device listed at the offer has fetched it
        assert _stored(srv, file_id).exists() == (n == 0)
    assert got["carol"] == got["carol2"] == body
    r = sc(homes["carol"], "fetch", file_id, "-o", str(tmp / "again.bin"))
    assert r.returncode == 3 and b"was already fetched" in r.stderr and b"Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 2 and r.stderr.splitlines()[1].startswith(b"securecomm: hint:")


def test_the_senders_other_device_sees_it_as_sent_and_does_not_fetch(world):
    srv, homes, tmp = world
    file_id = _send(homes, tmp, os.urandom(1000))
    (shown,) = _inbox(homes["alice2"])
    assert shown["from"] == "alice" and shown["to"] == "carol"
    assert shown["file"]["id"] == file_id and shown["file"]["fetch"] is False
    assert "sent to carol from another device" in shown["body"] and " fetch " not in shown["body"]
    assert list(homes["alice2"].rglob(f"{file_id}*")) == []  # no notice saved: no file key on that device
    r = sc(homes["alice2"], "fetch", file_id)
    assert r.returncode == 3 and b"no received file" in r.stderr
    assert _stored(srv, file_id).exists()  # nothing the sender's devices did touched carol's copy


def test_a_device_removed_after_the_offer_is_not_waited_for(world):
    srv, homes, tmp = world
    body = os.urandom(1000)
    file_id = _send(homes, tmp, body)
    rows = json.loads(sc(homes["carol"], "devices", "--json").stdout)
    phone = next(r for r in rows if not r["this"])
    assert sc(homes["carol"], "devices", "remove", phone["id"], "--yes").returncode == 0
    assert [m["file"]["id"] for m in _inbox(homes["carol"])] == [file_id]
    r = sc(homes["carol"], "fetch", file_id, "-o", str(tmp / "got.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp / "got.bin").read_bytes() == body
    assert not _stored(srv, file_id).exists()  # the only device still listed fetched it


def _notices_waiting(srv: ServerProc, user: str) -> list[bytes]:
    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return [bytes(e) for (e,) in con.execute(
            "SELECT m.envelope FROM mailbox m JOIN users u ON u.id = m.recipient_id WHERE u.name = ? ORDER BY m.id",
            (user,))]
    finally:
        con.close()


def _every_file(folders: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file())


def test_a_stolen_home_and_server_open_no_file_already_fetched(world):
    """The ciphertext of the file (from the server's files folder) and of its notices (from the mailbox)
    are recorded as they wait. Both of carol's devices read the notice and fetch the file. Then an
    attacker copies both devices' whole homes and the server's whole data folder and tries every
    private key found there, through the project's code paths and raw HPKE: neither the notices nor
    the stream open, and the file key is nowhere on disk. The copy taken before the devices read
    anything opens every notice, and the key in it opens the stream: the reference that the attack
    works. (On the old code the stream was HPKE-sealed to a device's long-term key, which the copy
    taken after the fetches still holds: it opened the file.)"""
    srv, homes, tmp = world
    body = os.urandom(SIZE)
    file_id = _send(homes, tmp, body)
    stream = _stored(srv, file_id).read_bytes()
    notices = _notices_waiting(srv, "carol")
    assert len(notices) == 2  # one per device, each sealed to a one-time prekey of that device
    assert all(K.parse_v2(n).header.key_kind == K.ONE_TIME for n in notices)
    header = S.parse_header(S._Pull([stream]))
    assert header.version == S.VERSION_DETACHED and header.enc == b"" and header.sealed_key == b""

    stolen = [homes["carol"], homes["carol2"], srv.home]
    before = tmp / "stolen-before"
    for i, folder in enumerate(stolen):
        shutil.copytree(folder, before / str(i))
    for device in ("carol", "carol2"):
        assert [m["file"]["id"] for m in _inbox(homes[device])] == [file_id]
        r = sc(homes[device], "fetch", file_id, "-o", str(tmp / f"{device}.bin"))
        assert r.returncode == 0, r.stderr
    after = tmp / "stolen-after"
    for i, folder in enumerate(stolen):
        shutil.copytree(folder, after / str(i))

    alice = PrivateIdentity.from_pem((homes["alice"] / "identities" / "default.key").read_bytes())
    taken = [after / str(i) for i in range(3)]
    assert _attack(notices, taken, alice) == []
    found = _everything(taken)
    assert len(found["identities"]) >= 2 and found["devices"]  # the attacker did find keys to try
    for ident in found["identities"]:  # the stream has no HPKE part: no key on disk opens it
        with _quiet():
            S.open_stream([stream], ident, alice.public)
            raise AssertionError("a long-term key opened the file's stream")
    (tmp / "alice.pub").write_text(alice.public.line + "\n")  # offline `decrypt` refuses it by name
    (tmp / "recorded.sce").write_bytes(stream)
    r = sc(homes["carol"], "decrypt", "--from", str(tmp / "alice.pub"), str(tmp / "recorded.sce"))
    error, hint = r.stderr.decode().splitlines()
    assert r.returncode == 6 and r.stdout == b"" and "key travels in a file notice" in error
    assert hint == "securecomm: hint: on a device of its recipient: `securecomm inbox`, then `securecomm fetch ID`"
    everything = _every_file(taken)
    reference = _attack(notices, [before / str(i) for i in range(3)], alice)
    assert len(reference) == 2
    key = FileNotice.decode(reference[0].encode()).key
    assert key not in everything and key.hex().encode() not in everything
    assert base64.b64encode(key) not in everything
    account = S.parse_header(S._Pull([stream])).header.recipient
    opened = S.open_stream([stream], None, alice.public, file_key=key, account=account)
    assert b"".join(opened) == body  # the reference: with the notice's key, the recorded stream opens


def test_a_file_to_yourself_goes_to_your_other_device(world):
    """A file to one's own account: the other device fetches it, and the server deletes it then; the
    sending device shows its own copy as sent from this device (it has the file: nothing to fetch)."""
    srv, homes, tmp = world
    body = os.urandom(1000)
    src = tmp / "to-phone.bin"
    src.write_bytes(body)
    r = sc(homes["alice"], "send", "--to", "alice", "--file", str(src), "--json")
    assert r.returncode == 0, r.stderr
    file_id = json.loads(r.stdout)["file_id"]
    (own,) = _inbox(homes["alice"])
    assert "sent to alice from this device" in own["body"] and own["file"]["fetch"] is False
    (other,) = _inbox(homes["alice2"])
    assert other["body"].endswith(f" fetch {file_id}") and f"securecomm --home {homes['alice2']}" in other["body"]
    r = sc(homes["alice2"], "fetch", file_id, "-o", str(tmp / "got.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp / "got.bin").read_bytes() == body
    assert not _stored(srv, file_id).exists()  # the sending device is not waited for
