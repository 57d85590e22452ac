"""`devices`, `devices remove` and `contacts verify` through Click's CliRunner and a real server (issue 12).

Each user logs in with the installed entry point (`user login` makes the user
key, list 1 and prekeys); a second device of alice is added the way pairing
ends (a list signed by her user key naming it, published by her first
device), so that `devices` has two rows and `devices remove` something to
remove.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from securecomm.crypto import devices as D
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.safety import safety_number
from securecomm.store.devicekeys import DeviceKeys
from securecomm.timeutil import now_ms
from securecomm.wire import protocol as P
from tests.conftest import run_entry
from tests.serverproc import PASSWORD, ServerProc, add_user, login
from tests.test_error_table import Raw

#: A device's name when `user login` is given no --device-name: this computer's host name (item 12).
HOST = socket.gethostname().split(".")[0]


def _identity(home: Path) -> PrivateIdentity:
    from securecomm.crypto import identity as I

    return I.load(home / "identities" / "default.key", lambda: b"")


def _keys(home: Path) -> DeviceKeys:
    return DeviceKeys(home / "devices" / "default", _identity(home).kem)


@pytest.fixture()
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = {}
    try:
        for user in ("alice", "bob"):
            add_user(srv.home, user)
            homes[user] = tmp_path / user
            r = login(homes[user], srv, user)
            assert r.returncode == 0, r.stderr
        yield srv, homes
    finally:
        srv.stop()


def _add_second_device(srv: ServerProc, home: Path, name: str = "phone") -> bytes:
    """Pair a new device: it asks (pair_start), alice's first device approves list 2 = both (`devices approve`)."""
    me, keys = _identity(home), _keys(home)
    key = keys.user_key()
    assert key is not None
    conn = Raw(srv).start().login_key("alice", me)
    try:
        conn.send(P.Request(1, "device_list", {"user": "alice"}))
        current = conn.until(P.Result)
        assert isinstance(current, P.Result)
        certs = [D.DeviceCert.decode(bytes.fromhex(c)) for c in current.data["certs"]]
        device = PrivateIdentity.generate("x25519")
        pending = Raw(srv).start()  # a new device joins by pairing only (6.4; attack F1)
        pending.send(pending.registration("alice", device))
        assert isinstance(pending.until(P.LoginOk), P.LoginOk)
        pending.send(P.Request(1, "pair_start", {"name": name}))
        started = pending.until(P.Result)
        assert isinstance(started, P.Result), started
        new = D.DeviceCert.sign(key, "alice", device.public, name, now_ms())
        certs.append(new)
        dlist = D.DeviceList.sign(key, "alice", 2, now_ms(), [c.device_id for c in certs])
        conn.send(P.Request(2, "pair_approve", {"code": started.data["code"], "cert": new.encode().hex(),
                                                "user_key": "00", "device_list": dlist.encode().hex(),
                                                "certs": [c.encode().hex() for c in certs]}))
        done = conn.until(P.Result)
        assert isinstance(done, P.Result) and done.data == {"counter": 2}
        pending.close()
    finally:
        conn.close()
    return new.device_id


def test_devices_lists_this_accounts_devices_verified_and_marks_this_one(world, sc):
    srv, homes = world
    phone = _add_second_device(srv, homes["alice"])
    r = sc("devices", "--json", home_dir=homes["alice"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    mine = _identity(homes["alice"]).public
    assert [(d["name"], d["device_id"], d["this"]) for d in rows] == \
        [(HOST, mine.fingerprint.hex(), True), ("phone", phone.hex(), False)]
    assert rows[0]["fingerprint"] == mine.fingerprint_text and rows[0]["id"] == mine.fingerprint[:6].hex()
    assert rows[0]["last_seen_ms"] is not None and rows[1]["last_seen_ms"] is None  # the phone never connected
    table = sc("devices", home_dir=homes["alice"]).output
    assert re.search(rf"^\*\s+{HOST}\s+{mine.fingerprint[:6].hex()}", table, re.M)
    assert re.search(rf"^\s+phone\s+{phone[:6].hex()}", table, re.M)


def test_devices_refuses_a_list_not_signed_by_this_devices_user_key(world, sc):
    _, homes = world
    # The server's list stays signed by alice's key; the device's own copy is now another key:
    # what the device would see if a server substituted the list.
    folder = homes["alice"] / "devices" / "default"
    (folder / "user.key").unlink()
    DeviceKeys(folder, _identity(homes["alice"]).kem).save_user_key(D.UserKey.generate())
    r = sc("devices", home_dir=homes["alice"])
    assert r.exit_code == 6
    assert "securecomm: error: " in r.output and "user key" in r.output and "Traceback" not in r.output


def test_devices_remove_signs_a_new_list_without_it(world, sc):
    srv, homes = world
    phone = _add_second_device(srv, homes["alice"])
    r = sc("devices", "remove", phone[:6].hex(), "--json", "--yes", home_dir=homes["alice"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["counter"] == 3 and out["removed"]["device_id"] == phone.hex() and out["removed"]["name"] == "phone"
    rows = json.loads(sc("devices", "--json", home_dir=homes["alice"]).output)
    assert [d["name"] for d in rows] == [HOST]
    # bob, who claims alice's devices from the server, no longer sees the phone
    conn = Raw(srv).start().login_key("bob", _identity(homes["bob"]))
    try:
        conn.send(P.Request(1, "device_list", {"user": "alice"}))
        got = conn.until(P.Result)
        assert isinstance(got, P.Result)
        dlist = D.DeviceList.decode(bytes.fromhex(got.data["device_list"]))
        assert dlist.counter == 3 and not dlist.has(phone) and "last_seen" not in got.data
    finally:
        conn.close()


def test_devices_remove_unknown_id_and_last_device_are_clear_errors(world, sc):
    _, homes = world
    r = sc("devices", "remove", "abcdef012345", "--yes", home_dir=homes["alice"])
    assert r.exit_code == 2
    assert "securecomm: error: 'abcdef012345' names no device" in r.output
    assert "securecomm: hint: use the ID column of: securecomm devices" in r.output
    mine = _identity(homes["alice"]).public.fingerprint[:6].hex()
    r = sc("devices", "remove", mine, "--yes", home_dir=homes["alice"])
    assert r.exit_code == 2 and "that is your only device" in r.output
    assert [d["name"] for d in json.loads(sc("devices", "--json", home_dir=homes["alice"]).output)] == [HOST]


def _digits(output: str) -> str:
    return "".join(re.findall(r"^(?:\d{5} ){3}\d{5}$", output, re.M)).replace(" ", "")


def test_contacts_verify_shows_the_same_number_on_both_sides_and_marks_verified(world, sc):
    _, homes = world
    r = sc("contacts", "verify", "bob", input="y\n", home_dir=homes["alice"])
    assert r.exit_code == 0, r.output
    alice_key, bob_key = (_keys(homes[u]).user_key() for u in ("alice", "bob"))
    assert alice_key is not None and bob_key is not None
    expected = safety_number("alice", alice_key.public, "bob", bob_key.public)
    assert _digits(r.output) == expected and len(expected) == 60
    assert "bob is now verified" in r.output
    seen_by_bob = sc("contacts", "verify", "alice", input="n\n", home_dir=homes["bob"])
    assert seen_by_bob.exit_code == 130 and _digits(seen_by_bob.output) == expected
    listed = {c["name"]: c for c in json.loads(sc("contacts", "--json", home_dir=homes["alice"]).output)}
    assert listed["bob"]["verified"] is True and listed["bob"]["fingerprint"] == bob_key.public.fingerprint_text
    assert json.loads(sc("contacts", "--json", home_dir=homes["bob"]).output)[0]["verified"] is False
    assert re.search(r"^bob\s+\S+\s+verified$", sc("contacts", home_dir=homes["alice"]).output, re.M)


def test_a_verified_contacts_new_user_key_is_a_loud_hard_stop(world, sc):
    srv, homes = world
    assert sc("contacts", "verify", "bob", "--yes", home_dir=homes["alice"]).exit_code == 0
    # bob resets his user key (a new device list under a new key, `reset`: password + device key proved)
    from securecomm.client import devicesetup as S

    bob = _identity(homes["bob"])
    conn = Raw(srv).start().login_password("bob", bob)
    try:
        conn.send(P.Request(1, "device_list_publish",
                            S.first_device("bob", bob, "default", _keys(homes["bob"]), now_ms(), reset=True)))
        assert isinstance(conn.until(P.Result), P.Result)
    finally:
        conn.close()
    # verify shows the change loudly and the new key's number; "no" leaves it refused (test_devux.py: "yes")
    r = sc("contacts", "verify", "bob", input="n\n", home_dir=homes["alice"])
    assert r.exit_code == 130
    assert "securecomm: warning: STOP: you VERIFIED this contact, and the user key of bob has CHANGED" in r.output
    assert "the new key is still refused" in r.output
    assert "CHANGED (was VERIFIED)" in sc("contacts", home_dir=homes["alice"]).output
    # new-user check: a bare `contacts trust` quietly undid the verification; now it needs the fingerprint
    bare = sc("contacts", "trust", "bob", home_dir=homes["alice"])
    assert bare.exit_code != 0 and "you VERIFIED bob's safety number" in bare.output, bare.output
    assert "CHANGED (was VERIFIED)" in sc("contacts", home_dir=homes["alice"]).output
    new_key = _keys(homes["bob"]).user_key()
    assert new_key is not None
    other = D.UserKey.generate().public.fingerprint_text
    wrong = sc("contacts", "trust", "bob", "--fingerprint", other, home_dir=homes["alice"])
    assert wrong.exit_code == 6 and "not the one you gave" in wrong.output
    trusted = sc("contacts", "trust", "bob", "--fingerprint", new_key.public.fingerprint_text, home_dir=homes["alice"])
    assert trusted.exit_code == 0 and "CHANGED cleared" in trusted.output
    again = sc("contacts", "trust", "bob", home_dir=homes["alice"])  # before: "no contact named 'bob'"
    assert again.exit_code == 3 and "has not changed" in again.output
    r = sc("contacts", "verify", "bob", input="y\n", home_dir=homes["alice"])
    assert r.exit_code == 0 and new_key is not None and "bob is now verified" in r.output
    assert new_key.public.fingerprint_text in r.output


def test_verify_yourself_is_a_usage_error(world, sc):
    _, homes = world
    r = sc("contacts", "verify", "alice", home_dir=homes["alice"])
    assert r.exit_code == 2 and "securecomm: error: that is you" in r.output


def _code(stderr: bytes) -> str:
    found = re.findall(r"pairing code: ([0-9A-Z]{5}-[0-9A-Z]{5})", stderr.decode())
    assert len(found) == 1, stderr.decode()
    return found[0]


def test_pairing_from_the_cli_code_approve_complete(world, sc, tmp_path):
    """Spec 6.4 through the commands: `user login` on a new device prints a code, `devices approve CODE`
    on the first one shows the new device's fingerprint and signs it in, and the new device's next login
    collects the user key. No --replace-key anywhere: the new device's first login is a pending device
    (pairing only), and the first device stays logged in with its own key."""
    srv, homes = world
    laptop = homes["alice"]
    phone = tmp_path / "alice-phone"
    first = login(phone, srv, "alice", PASSWORD, "--identity", "phone")
    assert first.returncode == 0, first.stderr
    code = _code(first.stderr)
    from securecomm.crypto import identity as I

    phone_id = I.load(phone / "identities" / "phone.key", lambda: b"")
    assert phone_id.public.fingerprint_text in first.stderr.decode()
    assert not (phone / "devices" / "phone" / "user.key").exists()
    assert login(laptop, srv, "alice", PASSWORD).returncode == 0

    refused = sc("devices", "approve", code, input="n\n", home_dir=laptop)
    assert refused.exit_code == 130 and phone_id.public.fingerprint_text in refused.output
    assert len(json.loads(sc("devices", "--json", home_dir=laptop).output)) == 1
    bad = sc("devices", "approve", "00000-00000", "--fingerprint", phone_id.public.fingerprint_text, home_dir=laptop)
    assert bad.exit_code == 9 and "securecomm: error: server: " in bad.output
    unseen = sc("devices", "approve", code, "--yes", home_dir=laptop)  # attack check: --yes approved unseen
    assert unseen.exit_code == 2 and "--fingerprint" in unseen.output
    other = I.PrivateIdentity.generate("x25519").public.fingerprint_text  # a server that put another device there
    wrong = sc("devices", "approve", code, "--fingerprint", other, home_dir=laptop)
    assert wrong.exit_code == 6 and "is not the one you named" in wrong.output, wrong.output
    # not printed whole (the new-user check: ready to copy into --fingerprint, it invited approving the stranger)
    assert phone_id.public.fingerprint_text not in wrong.output
    assert len(json.loads(sc("devices", "--json", home_dir=laptop).output)) == 1  # nothing approved
    ok = sc("devices", "approve", code.lower().replace("-", " "), input="y\n", home_dir=laptop)
    assert ok.exit_code == 0, ok.output
    assert "device phone asks to join alice's devices" in ok.output and "device list 2" in ok.output
    used = sc("devices", "approve", code, "--fingerprint", phone_id.public.fingerprint_text[7:], home_dir=laptop)
    assert used.exit_code == 9

    second = login(phone, srv, "alice", PASSWORD, "--identity", "phone")
    assert second.returncode == 0, second.stderr
    laptop_key = _keys(laptop).user_key()
    phone_key = DeviceKeys(phone / "devices" / "phone", phone_id.kem).user_key()
    assert laptop_key is not None and phone_key is not None
    assert phone_key.public.raw == laptop_key.public.raw
    assert f"paired: this device now holds alice's user key {laptop_key.public.fingerprint_text}" \
        in second.stderr.decode()
    assert len(list((phone / "devices" / "phone" / "prekeys").iterdir())) > 1  # set up: prekeys uploaded
    rows = json.loads(sc("devices", "--json", home_dir=phone).output)
    assert {(d["name"], d["this"]) for d in rows} == {(HOST, False), ("phone", True)}


def _pair_from_the_cli(srv: ServerProc, sc, laptop: Path, home: Path, name: str = "phone") -> PrivateIdentity:
    """A new device of alice's in `home` (identity `name`): `user login` there, `devices approve` on the
    laptop, `user login` there again to collect the user key."""
    from securecomm.crypto import identity as I

    code = _code(login(home, srv, "alice", PASSWORD, "--identity", name).stderr)
    device = I.load(home / "identities" / f"{name}.key", lambda: b"")
    ok = sc("devices", "approve", code, "--fingerprint", device.public.fingerprint_text, home_dir=laptop)
    assert ok.exit_code == 0, ok.output
    assert login(home, srv, "alice", PASSWORD, "--identity", name).returncode == 0
    return device


def test_a_removed_devices_file_goes_with_its_notice(world, sc, tmp_path):
    """The attacker's check (stop 25, #5): removing a device deleted the mail it had sent, the notice of its
    file among it, but the file stayed on the server for --file-days, counted against the recipient's quota,
    with nothing left that could fetch it. Now it goes with the device; a file from the device that stays
    is kept."""
    srv, homes = world
    laptop, phone = homes["alice"], tmp_path / "alice-phone"
    phone_id = _pair_from_the_cli(srv, sc, laptop, phone)
    sent = {}
    for name, home in (("phone", phone), ("laptop", laptop)):
        src = tmp_path / f"from-{name}.bin"
        src.write_bytes(name.encode() * 1000)
        r = sc("send", "--to", "bob", "--file", str(src), "--json", home_dir=home)
        assert r.exit_code == 0, r.output
        sent[name] = json.loads(r.output)["file_id"]
    stored = srv.home / "files"
    assert (stored / sent["phone"]).exists() and (stored / sent["laptop"]).exists()

    r = sc("devices", "remove", phone_id.public.fingerprint[:6].hex(), "--yes", home_dir=laptop)
    assert r.exit_code == 0, r.output
    srv.wait_log(r"deleted 1 file\(s\) uploaded by removed devices")
    assert not (stored / sent["phone"]).exists() and (stored / sent["laptop"]).exists()
    shown = sc("inbox", "--json", home_dir=homes["bob"])
    files = [json.loads(line)["file"]["id"] for line in shown.output.splitlines() if '"file"' in line]
    assert files == [sent["laptop"]]  # the phone's notice went with its mail, and now its file too
    fetched = sc("fetch", sent["laptop"], "-o", str(tmp_path / "got.bin"), home_dir=homes["bob"])
    assert fetched.exit_code == 0, fetched.output
    assert (tmp_path / "got.bin").read_bytes() == b"laptop" * 1000


def test_a_list_of_our_own_older_than_one_this_device_signed_is_refused(world, sc, tmp_path):
    """The attacker's check (stop 26, #1): after a server was restored from a backup taken before the
    phone was removed, the laptop that had removed it sealed its next message to the phone too, showed
    the phone's messages with a tick, and `devices approve` signed a list above every counter that put
    the phone back for contacts too. A list of our own account older than one this device signed or
    saw is now refused for sending, opening and approving; `devices remove` again is the way out."""
    srv, homes = world
    laptop, phone = homes["alice"], tmp_path / "alice-phone"
    phone_id = _pair_from_the_cli(srv, sc, laptop, phone)  # list 2
    backup = tmp_path / "before-removal.db"
    assert run_entry("--home", str(srv.home), "backup", str(backup)).returncode == 0
    phone_short = phone_id.public.fingerprint[:6].hex()
    assert sc("devices", "remove", phone_short, "--yes", home_dir=laptop).exit_code == 0  # list 3
    srv.stop()
    assert run_entry("--home", str(srv.home), "restore", "--force", str(backup)).returncode == 0
    srv.start()  # list 2 again, naming the phone

    sent = sc("send", "--to", "bob", "after the restore", home_dir=laptop)
    assert sent.exit_code == 6 and "older than list 3" in sent.output, sent.output
    from_phone = run_entry("--home", str(phone), "send", "--to", "alice", "from the removed phone")
    assert from_phone.returncode == 0, from_phone.stderr  # the server's list 2 names it again
    shown = sc("inbox", home_dir=laptop)
    assert "from the removed phone" not in shown.output and "held back" in shown.output, shown.output
    tablet = tmp_path / "alice-tablet"
    code = _code(login(tablet, srv, "alice", PASSWORD, "--identity", "tablet").stderr)
    from securecomm.crypto import identity as I

    tablet_id = I.load(tablet / "identities" / "tablet.key", lambda: b"")
    approve = sc("devices", "approve", code, "--fingerprint", tablet_id.public.fingerprint_text, home_dir=laptop)
    assert approve.exit_code == 6 and "older than list 3" in approve.output, approve.output

    # the way out: remove it again; the new list goes above 3, and mail flows
    again = sc("devices", "remove", phone_short, "--yes", "--json", home_dir=laptop)
    assert again.exit_code == 0 and "older than list 3" in again.output, again.output  # warned, not refused
    assert json.loads(again.output[again.output.index("{"):])["counter"] == 4
    assert sc("send", "--to", "bob", "after removing it again", home_dir=laptop).exit_code == 0


def test_a_file_that_waited_only_for_a_removed_device_goes_at_once(world, sc, tmp_path):
    """The new user's check (stop 26): once the laptop had fetched it, a file waiting for the phone too
    stayed until the expiry sweep (up to 10 minutes) after the phone was removed, filling the quota."""
    srv, homes = world
    laptop, phone = homes["alice"], tmp_path / "alice-phone"
    phone_id = _pair_from_the_cli(srv, sc, laptop, phone)
    src = tmp_path / "to-alice.bin"
    src.write_bytes(b"x" * 5000)
    sent = sc("send", "--to", "alice", "--file", str(src), "--json", home_dir=homes["bob"])
    assert sent.exit_code == 0, sent.output
    file_id = json.loads(sent.output)["file_id"]
    assert sc("inbox", home_dir=laptop).exit_code == 0
    assert sc("fetch", file_id, "-o", str(tmp_path / "got.bin"), home_dir=laptop).exit_code == 0
    assert (srv.home / "files" / file_id).exists()  # the phone may still fetch it
    assert sc("devices", "remove", phone_id.public.fingerprint[:6].hex(), "--yes", home_dir=laptop).exit_code == 0
    srv.wait_log(r"deleted 1 file\(s\) whose remaining devices were removed")
    assert not (srv.home / "files" / file_id).exists()


def test_a_file_to_yourself_needs_another_device(world, sc, tmp_path):
    """The new user's check (stop 26): `send --to ME --file` from an only device stored a file nobody could
    fetch (this device has it; no other device), which filled the quota for --file-days, without a word."""
    srv, homes = world
    src = tmp_path / "plan.txt"
    src.write_bytes(b"the plan")
    alone = sc("send", "--to", "alice", "--file", str(src), home_dir=homes["alice"])
    assert alone.exit_code == 2 and "this is your only one" in alone.output, alone.output
    stored = srv.home / "files"
    assert not stored.exists() or {p.name for p in stored.iterdir()} <= {"files.db"}  # nothing offered
    # with another device it goes: test_multidevice_files_cli.py, test_a_file_to_yourself_goes_to_your_other_device


def test_republish_is_the_way_out_when_the_restored_list_is_right(world, sc, tmp_path):
    """The re-check (stop 26): after a restore brought back an older list whose devices were all right (an
    only device, say), the own-list refusal left no way out: send refused, `devices remove` of the only
    device is refused, approve refused. `devices republish` signs the same devices again above."""
    srv, homes = world
    laptop = homes["alice"]
    assert "nothing to sign" in sc("devices", "republish", "--yes", home_dir=laptop).output  # not older: no-op
    backup = tmp_path / "list-1.db"
    assert run_entry("--home", str(srv.home), "backup", str(backup)).returncode == 0
    phone_id = _pair_from_the_cli(srv, sc, laptop, tmp_path / "alice-phone")  # list 2
    assert sc("devices", "remove", phone_id.public.fingerprint[:6].hex(), "--yes", home_dir=laptop).exit_code == 0
    srv.stop()
    assert run_entry("--home", str(srv.home), "restore", "--force", str(backup)).returncode == 0
    srv.start()  # list 1: only the laptop, which is right
    refused = sc("send", "--to", "bob", "before", home_dir=laptop)
    assert refused.exit_code == 6 and "securecomm devices republish" in refused.output, refused.output
    no = sc("devices", "republish", input="n\n", home_dir=laptop)
    assert no.exit_code == 130 and "older than list 3" in no.output, no.output
    ok = sc("devices", "republish", "--yes", home_dir=laptop)
    assert ok.exit_code == 0 and "signed the same devices again as device list 4" in ok.output, ok.output
    assert sc("send", "--to", "bob", "after republishing", home_dir=laptop).exit_code == 0
    shown = sc("inbox", "--json", home_dir=homes["bob"])
    assert [json.loads(x)["body"] for x in shown.output.splitlines() if x.startswith("{")] == ["after republishing"]


def test_a_device_removed_during_its_upload_stops_with_one_clear_error(world, sc, tmp_path):
    """The re-check (stop 26): the sender printed "bob was told about this file; the server deletes its
    unfinished upload after an hour" (both untrue: it is deleted with the device), then the error, then
    "Task exception was never retrieved" and a traceback."""
    import subprocess

    from tests.conftest import ENTRY

    srv, homes = world
    laptop, phone = homes["alice"], tmp_path / "alice-phone"
    phone_id = _pair_from_the_cli(srv, sc, laptop, phone)
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(300):
            f.write(os.urandom(1 << 20))
    follow = subprocess.Popen([ENTRY, "--home", str(homes["bob"]), "inbox", "--follow", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sender = subprocess.Popen([ENTRY, "--home", str(phone), "send", "--to", "bob", "--file", str(big)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        assert "file" in json.loads(follow.stdout.readline())  # the notice: the upload has started
        assert sc("devices", "remove", phone_id.public.fingerprint[:6].hex(), "--yes", home_dir=laptop).exit_code == 0
        _, err = sender.communicate(timeout=120)
    finally:
        follow.kill()
        follow.wait()
        if sender.poll() is None:
            sender.kill()
    if sender.returncode == 0:
        pytest.skip("the upload ended before the removal reached it (a fast machine)")
    text = err.decode()
    assert sender.returncode == 5 and "this device was removed" in text, text
    assert "Traceback" not in text and "never retrieved" not in text and "after an hour" not in text, text


def test_a_client_whose_data_folder_does_not_exist_yet_reads_its_mail(world, sc, tmp_path):
    """Review of stop 26: the devices that wrote SCM3 were remembered in the data folder, which a client
    without --home (config and data apart, platformdirs) may not have yet: its first message failed. They
    sit beside seen_ids, in the config folder, which a logged-in client has."""
    srv, homes = world
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "XDG_DATA_HOME": str(tmp_path / "xdg-data")}
    add_user(srv.home, "carol")
    r = run_entry("user", "login", "carol", "--server", srv.address, "--ca", str(srv.home / "tls" / "ca.pem"),
                  "--password-stdin", input=(PASSWORD + "\n").encode(), env=env)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "xdg-data" / "securecomm"
    if data.exists():
        shutil.rmtree(data)  # as on a machine where nothing was written there yet
    assert sc("send", "--to", "carol", "to a fresh machine", home_dir=homes["bob"]).exit_code == 0
    got = run_entry("inbox", "--json", env=env)
    assert got.returncode == 0, got.stderr
    assert [json.loads(x)["body"] for x in got.stdout.splitlines()] == ["to a fresh machine"]
