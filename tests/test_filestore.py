"""The server's ciphertext store for files (docs/PROTOCOL.md 4.4): store/files.py on a real folder and SQLite,
and store/pgfiles.py on a real PostgreSQL (tests/cluster.py), one suite for both."""

from __future__ import annotations

import hashlib
import os

import pytest

from securecomm.store.files import FileRefused, FileStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_115_200.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def make(request, tmp_path, clock):
    """Opens the store the way a relay does (again after a "restart"); the same place every time."""
    opened = []
    if request.param == "sqlite":
        def open_store(**limits):
            return FileStore(tmp_path / "files", clock=clock, **limits)
    else:
        from securecomm.store.pgfiles import PgFileStore
        from securecomm.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")
        PostgresStore(url, migrate=True).close()

        def open_store(**limits):
            return PgFileStore(url, clock=clock, **limits)

    def make_store(quota: int = 1000, max_file: int = 800, days: float = 7, **more):
        opened.append(open_store(quota=quota, max_file=max_file, days=days, **more))
        return opened[-1]

    yield make_store
    for s in opened:
        s.close()


@pytest.fixture
def store(make):
    return make()


def on_disk(store) -> bool:
    """The SQLite layout (a folder of .part and complete files), whose files the tests also look at."""
    return isinstance(store, FileStore)


def _upload(store: FileStore, data: bytes, to: str = "bob", step: int = 100) -> bytes:
    offer = store.offer("alice", to, len(data), hashlib.sha256(data).digest())
    for at in range(0, len(data), step):
        received, complete = store.put("alice", offer.file_id, at, data[at : at + step])
        assert received == min(at + step, len(data)) and complete == (received == len(data))
    return offer.file_id


def _refused(kind: str, fn, *args) -> FileRefused:
    with pytest.raises(FileRefused) as e:
        fn(*args)
    assert e.value.kind == kind
    return e.value


def test_round_trip_and_delete_when_done(store):
    data = os.urandom(450)
    file_id = _upload(store, data)
    row, f = store.open_for("bob", file_id)
    with f:
        f.seek(100)
        assert f.read() == data[100:]
    assert row.size == 450 and row.sender == "alice"
    if on_disk(store):
        assert oct((store.folder / file_id.hex()).stat().st_mode & 0o777) == "0o600"
    store.done("bob", file_id)
    assert store.row(file_id) is None
    assert not on_disk(store) or not (store.folder / file_id.hex()).exists()
    assert store.used("bob") == 0


def test_someone_elses_file_is_not_found(store):
    file_id = _upload(store, b"x" * 10)
    _refused("file-not-found", store.open_for, "carol", file_id)
    _refused("file-not-found", store.done, "alice", file_id)  # the sender cannot delete it either
    _refused("file-not-found", store.open_for, "bob", os.urandom(16))
    offer = store.offer("alice", "bob", 10, hashlib.sha256(b"y" * 10).digest())
    _refused("file-not-found", store.put, "mallory", offer.file_id, 0, b"y")


def test_chunk_out_of_order_writes_nothing(store):
    offer = store.offer("alice", "bob", 10, hashlib.sha256(b"0123456789").digest())
    store.put("alice", offer.file_id, 0, b"0123")
    _refused("file-out-of-order", store.put, "alice", offer.file_id, 5, b"56789")
    _refused("file-out-of-order", store.put, "alice", offer.file_id, 0, b"0123")
    assert store.received(offer.file_id) == 4
    assert store.put("alice", offer.file_id, 4, b"456789") == (10, True)


def test_more_than_offered_is_refused(store):
    offer = store.offer("alice", "bob", 4, hashlib.sha256(b"0123").digest())
    _refused("file-size-mismatch", store.put, "alice", offer.file_id, 0, b"01234")
    assert store.received(offer.file_id) == 0


def test_digest_mismatch_deletes_the_upload(store):
    offer = store.offer("alice", "bob", 4, hashlib.sha256(b"abcd").digest())
    _refused("file-digest-mismatch", store.put, "alice", offer.file_id, 0, b"abce")
    assert store.row(offer.file_id) is None
    assert not on_disk(store) or list(store.folder.glob("*.part")) == []
    assert store.used("bob") == 0


def test_an_offer_without_a_digest_completes_unchecked_and_resumes_without_one(store):
    """PROTOCOL.md 4.4: a sender sealing while it uploads offers the size alone (b"" here); the server
    keeps no running digest for it and completes it as it is (the recipient checks it end to end)."""
    offer = store.offer("alice", "bob", 8, b"")
    assert store.put("alice", offer.file_id, 0, b"abcd") == (4, False)
    assert offer.file_id not in store._hashers  # no digest work for it
    assert store.offer("alice", "bob", 8, b"", offer.file_id).received == 4  # resume, still without one
    _refused("file-mismatch", store.offer, "alice", "bob", 8, hashlib.sha256(b"abcdefgh").digest(), offer.file_id)
    assert store.put("alice", offer.file_id, 4, b"efgh") == (8, True)
    row, f = store.open_for("bob", offer.file_id)
    with f:
        assert f.read() == b"abcdefgh" and row.sha256 == b""


def test_quota_counts_complete_files_and_the_bytes_uploads_hold(store):
    """An offer reserves nothing of the recipient's quota (attack check: one offer of bob's whole quota and
    a byte an hour blocked every file to him for a week); its bytes count as they arrive."""
    big = store.offer("alice", "bob", 600, b"")
    assert store.put("alice", big.file_id, 0, b"x" * 600) == (600, True)
    _refused("file-over-quota", store.offer, "alice", "bob", 401, b"")
    second = store.offer("alice", "bob", 400, b"")  # exactly the quota
    third = store.offer("carol", "bob", 400, b"")  # fits too while nothing of `second` is held
    store.put("carol", third.file_id, 0, b"z" * 100)
    assert store.used("bob") == 700
    _refused("file-put-over-quota", store.put, "alice", second.file_id, 0, b"y" * 301)  # nothing written
    assert store.put("alice", second.file_id, 0, b"y" * 300) == (300, False)
    assert store.used("bob") == 1000
    store.offer("alice", "carol", 800, b"\0" * 32)  # another recipient's quota
    _refused("file-too-large", store.offer, "alice", "dave", 801, b"\0" * 32)
    _refused("file-too-large", store.offer, "alice", "dave", 0, b"\0" * 32)


def test_resume_after_restart(make):
    data = os.urandom(700)
    s = make()
    offer = s.offer("alice", "bob", len(data), hashlib.sha256(data).digest())
    s.put("alice", offer.file_id, 0, data[:300])
    s.close()
    s = make()  # the running digest is gone (with PostgreSQL: as on another relay)
    again = s.offer("alice", "bob", len(data), hashlib.sha256(data).digest(), offer.file_id)
    assert again.received == 300
    _refused("file-mismatch", s.offer, "alice", "bob", len(data) + 1, hashlib.sha256(data).digest(), offer.file_id)
    _refused("file-not-found", s.offer, "carol", "bob", len(data), hashlib.sha256(data).digest(), offer.file_id)
    assert s.put("alice", offer.file_id, 300, data[300:]) == (700, True)
    _, f = s.open_for("bob", offer.file_id)
    with f:
        assert f.read() == data
    s.close()


def test_expiry_deletes_complete_and_unfinished(store, clock):
    done_id = _upload(store, b"z" * 50)
    unfinished = store.offer("alice", "bob", 50, b"\0" * 32).file_id
    clock.now += 7 * 86400 - 1
    store.put("alice", unfinished, 0, b"z")  # not stalled: only its expiry may delete it
    assert store.expire() == 0
    clock.now += 2
    assert store.expire() == 2
    assert store.row(done_id) is None and store.row(unfinished) is None
    assert not on_disk(store) or sorted(p.name for p in store.folder.iterdir()) == ["files.db"]
    assert store.used("bob") == 0


def test_removed_user_takes_their_files(store):
    to_bob = _upload(store, b"a" * 20)
    from_bob = store.offer("bob", "carol", 5, b"\0" * 32).file_id
    other = store.offer("alice", "carol", 5, b"\0" * 32).file_id
    store.remove_user("bob")
    assert store.row(to_bob) is None and store.row(from_bob) is None and store.row(other) is not None


def test_keep_only_deletes_files_of_removed_accounts(store):
    to_bob = _upload(store, b"a" * 20)
    from_carol = store.offer("carol", "alice", 5, b"\0" * 32).file_id
    assert store.keep_only({"alice", "bob"}) == 1
    assert store.row(to_bob) is not None and store.row(from_carol) is None


def test_an_offer_barely_uploaded_holds_only_its_bytes_and_goes_once_stalled(store, clock):
    """An attacker's check: mallory offered a file the size of bob's whole quota and sent nothing, and
    every file to bob was refused as 'storage full' for --file-days (7 days)."""
    import time

    from securecomm.store.files import UPLOAD_IDLE

    squat = store.offer("mallory", "bob", 800, b"")
    store.put("mallory", squat.file_id, 0, b"m")  # and then a byte an hour: the offer holds 1 byte, not 800
    real = store.offer("alice", "bob", 800, b"")
    assert store.put("alice", real.file_id, 0, b"a" * 800) == (800, True)
    assert store.used("bob") == 801
    clock.now = time.time() + UPLOAD_IDLE + 1  # no byte arrived for UPLOAD_IDLE
    assert store.offer("alice", "bob", 50, b"\1" * 32).received == 0
    assert store.row(squat.file_id) is None  # the stalled upload is gone


def test_one_sender_has_at_most_max_open_uploads(store):
    """2,000 one-byte offers from one account made 2,000 part files and rows in 7 s."""
    from securecomm.store.files import MAX_OPEN_UPLOADS

    for _ in range(MAX_OPEN_UPLOADS):
        store.offer("mallory", "carol", 1, b"\0" * 32)
    _refused("file-over-quota", store.offer, "mallory", "carol", 1, b"\0" * 32)
    _refused("file-over-quota", store.offer, "mallory", "bob", 1, b"\0" * 32)  # all recipients together
    assert store.offer("alice", "carol", 1, b"\0" * 32).received == 0  # others are not affected


def test_reads_start_anywhere_and_cross_chunks(store):
    data = os.urandom(450)
    file_id = _upload(store, data, step=100)
    _, f = store.open_for("bob", file_id)
    with f:
        for at in (0, 99, 100, 101, 449, 450):
            f.seek(at)
            got = b""
            while chunk := f.read(64):
                assert len(chunk) <= 64
                got += chunk
            assert got == data[at:]


def test_an_upload_in_progress_is_readable_by_its_recipient_up_to_what_is_held(store):
    """Cut-through (PROTOCOL.md 4.4): file_get reads an unfinished upload no further than `progress`
    says is held; the open file keeps serving the same bytes after the upload completes (SQLite: the
    part file renamed under the reader), and `progress` says when it is gone."""
    data = os.urandom(450)
    offer = store.offer("alice", "bob", len(data), b"")
    _refused("file-not-found", store.open_for, "bob", offer.file_id)  # without partial: complete files only
    _refused("file-not-found", store.open_for, "carol", offer.file_id, True)  # never someone else's
    row, f = store.open_for("bob", offer.file_id, True)
    with f:
        assert not row.complete and store.progress(offer.file_id) == (0, False)
        store.put("alice", offer.file_id, 0, data[:200])
        assert store.progress(offer.file_id) == (200, False)
        assert f.read(200) == data[:200]
        store.put("alice", offer.file_id, 200, data[200:])
        assert store.progress(offer.file_id) == (450, True)
        assert f.read(250) == data[200:]
    store.done("bob", offer.file_id)
    assert store.progress(offer.file_id) is None


def test_a_digest_mismatch_found_after_a_restart_deletes_the_upload(make):
    """The digest of bytes received before the restart is computed from what is stored."""
    s = make()
    offer = s.offer("alice", "bob", 8, hashlib.sha256(b"abcdefgh").digest())
    s.put("alice", offer.file_id, 0, b"abcd")
    s = make()
    _refused("file-digest-mismatch", s.put, "alice", offer.file_id, 4, b"efgX")
    assert s.row(offer.file_id) is None and s.used("bob") == 0


def test_two_stores_on_one_database_share_the_quota(make, request):
    """Two relays: offers admitted by each must together stay within the recipient's quota."""
    a, b = make(), make()
    offer = a.offer("alice", "bob", 600, b"")
    a.put("alice", offer.file_id, 0, b"x" * 600)
    if on_disk(a):
        return  # one folder per relay: there is nothing to share
    _refused("file-over-quota", b.offer, "carol", "bob", 401, b"\0" * 32)
    assert b.used("bob") == 600


def test_keep_only_spares_an_account_added_on_another_relay_meanwhile(make, request):
    """With PostgreSQL the relay's list of accounts may be older than a `user add` elsewhere."""
    s = make()
    if on_disk(s):
        return
    from securecomm.store.postgres import PostgresStore

    users = PostgresStore(request.getfixturevalue("pg_url"))
    users.add_user("dave", "h")
    users.close()
    to_dave = s.offer("alice", "dave", 5, b"\0" * 32).file_id
    assert s.keep_only({"alice", "bob"}) == 0
    assert s.row(to_dave) is not None


def test_racing_uploads_do_not_overshoot_the_quota(make):
    """F9: two relays sharing one home (two stores on one folder or database, one worker thread each, as
    in a relay) race uploads to one recipient. Offers reserve nothing (attack check: an offer never
    uploaded blocked bob's files), so the quota is checked with each chunk, under a lock shared by both:
    exactly 3 of 8 uploads of 100 bytes fit a 350-byte quota."""
    import threading

    a, b = make(quota=350, max_file=800), make(quota=350, max_file=800)
    files = {st: [st.offer(sender, "bob", 100, b"").file_id for _ in range(4)]
             for st, sender in ((a, "alice"), (b, "carol"))}
    results: list[str] = []
    start = threading.Barrier(2)

    def uploads(st, sender):
        start.wait()
        for file_id in files[st]:
            try:
                assert st.put(sender, file_id, 0, b"u" * 100) == (100, True)
                results.append("ok")
            except FileRefused as e:
                results.append(e.kind)

    threads = [threading.Thread(target=uploads, args=(st, sender)) for st, sender in ((a, "alice"), (b, "carol"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["file-put-over-quota"] * 5 + ["ok"] * 3
    assert a.used("bob") == b.used("bob") == 300


def test_one_sender_cannot_fill_every_recipients_quota(make):
    """F3: a sender's complete, never-announced files count against a per-SENDER quota across recipients,
    so one account cannot fill accounts x quota of disk; fetching (file_done) frees it again."""
    st = make(quota=1000, max_file=800, sender_quota=1500)
    ids = []
    for to in ("bob", "carol"):
        body = os.urandom(700)
        o = st.offer("mallory", to, len(body), hashlib.sha256(body).digest())
        assert st.put("mallory", o.file_id, 0, body) == (700, True)
        ids.append(o.file_id)
    with pytest.raises(FileRefused) as e:  # dave's own quota has room; mallory's does not
        st.offer("mallory", "dave", 200, hashlib.sha256(b"x").digest())
    assert e.value.kind == "file-over-quota" and "you sent" in str(e.value)
    st.offer("alice", "dave", 200, hashlib.sha256(b"x").digest())  # another sender is not affected
    st.done("bob", ids[0])
    st.offer("mallory", "dave", 200, hashlib.sha256(b"x").digest())


def test_an_offer_must_leave_the_disk_floor_free(make, tmp_path):
    """F3: whatever the quotas allow, an offer that would leave less than the floor free on the files' disk
    is refused (SQLite layout: the files are on this machine's disk)."""
    st = make()
    if not on_disk(st):
        pytest.skip("PostgreSQL holds the ciphertext: its disk is the database server's")
    free = os.statvfs(st.folder).f_bavail * os.statvfs(st.folder).f_frsize
    st.disk_floor = free + (1 << 30)  # any offer now leaves less than the floor (with room for others' churn)
    with pytest.raises(FileRefused) as e:
        st.offer("alice", "bob", 100, hashlib.sha256(b"x").digest())
    assert e.value.kind == "file-over-quota" and "disk is nearly full" in str(e.value)
    st.disk_floor = 0
    st.offer("alice", "bob", 100, hashlib.sha256(b"x").digest())


# -- several devices (docs/PROTOCOL.md 4.4: a file waits for every device listed at the offer) -----------
C1, C2, C3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def _upload_for_devices(store, data: bytes, devices: list[bytes]) -> bytes:
    offer = store.offer("alice", "carol", len(data), hashlib.sha256(data).digest(), None, devices)
    assert store.put("alice", offer.file_id, 0, data) == (len(data), True)
    return offer.file_id


def test_a_file_waits_for_every_device_listed_at_the_offer(store):
    """The defect of issue 12/16: the first device's file_done deleted the one copy, so the second could
    never fetch it. Now each device crosses itself off; the file goes after the last, counted once."""
    data = os.urandom(300)
    file_id = _upload_for_devices(store, data, [C1, C2])
    assert store.used("carol") == 300  # one copy, whatever the number of devices
    assert store.done("carol", file_id, C1, [C1, C2]) is False
    _row, f = store.open_for("carol", file_id)  # the second device still gets every byte
    with f:
        assert f.read() == data
    assert store.done("carol", file_id, C1, [C1, C2]) is False  # the same device again: still waiting for C2
    assert store.done("carol", file_id, C2, [C1, C2]) is True
    assert store.row(file_id) is None and store.used("carol") == 0
    _refused("file-not-found", store.open_for, "carol", file_id)
    _refused("file-not-found", store.done, "carol", file_id, C2, [C1, C2])


def test_a_removed_device_is_not_waited_for(store):
    file_id = _upload_for_devices(store, os.urandom(100), [C1, C2, C3])
    assert store.done("carol", file_id, C1, [C1, C3]) is False  # C2 removed since: only C3 is left
    assert store.done("carol", file_id, C3, [C1, C3]) is True


def test_the_sweep_deletes_a_file_whose_remaining_devices_were_removed(store):
    kept = _upload_for_devices(store, os.urandom(100), [C1, C2, C3])
    gone = _upload_for_devices(store, os.urandom(100), [C2])
    legacy = _upload(store, os.urandom(50), to="carol")  # no fetchers: not the sweep's business
    assert store.done("carol", kept, C1, [C1, C2, C3]) is False
    assert sorted(store.waiting_recipients()) == ["carol"]
    assert store.prune_fetchers({"carol": [C1, C3]}) == 1  # C2 removed
    assert store.row(gone) is None
    assert store.fetchers(kept) == {C3}  # still waiting for C3
    assert store.row(legacy) is not None
    assert store.prune_fetchers({"carol": [C1]}) == 1 and store.row(kept) is None  # C3 removed too


def test_without_devices_the_first_done_deletes_as_before(store):
    file_id = _upload(store, os.urandom(100), to="carol")
    assert store.done("carol", file_id, C1, None) is True
    file_id = _upload_for_devices(store, os.urandom(100), [C1, C2])
    assert store.done("carol", file_id, None, [C1, C2]) is False  # a session that is no listed device
    assert store.row(file_id) is not None


def test_fetchers_survive_a_restart(make):
    first = make()
    file_id = _upload_for_devices(first, os.urandom(100), [C1, C2])
    assert first.done("carol", file_id, C1, [C1, C2]) is False
    first.close()
    again = make()
    assert again.fetchers(file_id) == {C2}
    assert again.done("carol", file_id, C2, [C1, C2]) is True


def test_a_files_db_from_before_gets_the_fetchers_table_and_keeps_its_files(tmp_path, clock):
    """A relay's files.db made before file_fetchers: opening adds the table; its waiting file has no
    fetchers, so it goes at the first file_done as it did then (PROTOCOL.md 4.4)."""
    import sqlite3

    folder = tmp_path / "old-files"
    folder.mkdir()
    con = sqlite3.connect(folder / "files.db")
    con.executescript("CREATE TABLE files (id BLOB PRIMARY KEY, sender TEXT NOT NULL, recipient TEXT NOT NULL, "
                      "size INTEGER NOT NULL, sha256 BLOB NOT NULL, complete INTEGER NOT NULL DEFAULT 0, "
                      "created REAL NOT NULL, expires REAL NOT NULL);")
    con.execute("INSERT INTO files VALUES (?, 'alice', 'carol', 3, x'', 1, ?, ?)",
                (bytes(16), clock.now, clock.now + 3600))
    con.commit()
    con.close()
    (folder / bytes(16).hex()).write_bytes(b"abc")
    store = FileStore(folder, clock=clock)
    try:
        assert store.fetchers(bytes(16)) == set()
        assert store.done("carol", bytes(16), C1, [C1, C2]) is True
        file_id = _upload_for_devices(store, b"new", [C1, C2])
        assert store.fetchers(file_id) == {C1, C2}
    finally:
        store.close()


def test_a_sender_at_the_cap_gets_room_from_its_own_idle_uploads(store, clock):
    """The attacker's check: eight `send --file` killed mid-upload (nothing cancels them) blocked every
    file of that account for UPLOAD_IDLE (an hour), with a hint about the recipient's quota."""
    import time

    from securecomm.store.files import IDLE_AT_CAP, MAX_OPEN_UPLOADS

    clock.now = started = time.time()  # the part files' times (SQLite) and the rows' (PostgreSQL) agree
    killed = [store.offer("mallory", "carol", 10, b"") for _ in range(MAX_OPEN_UPLOADS)]
    for offer in killed:
        store.put("mallory", offer.file_id, 0, b"k")
    alices = store.offer("alice", "carol", 10, b"")
    store.put("alice", alices.file_id, 0, b"a")
    refused = _refused("file-over-quota", store.offer, "mallory", "carol", 1, b"\0" * 32)
    assert "one that receives nothing for 5 minutes makes room" in refused.message
    clock.now = started + IDLE_AT_CAP + 1  # none of them advanced since (and UPLOAD_IDLE is far off)
    fresh = store.offer("mallory", "carol", 1, b"\0" * 32)
    assert fresh.received == 0 and all(store.row(o.file_id) is None for o in killed)
    assert store.row(alices.file_id) is not None  # another sender's idle upload is not its room


A1, A2 = b"\xa1" * 32, b"\xa2" * 32


def _upload_from(store, device: bytes | None, size: int = 100, complete: bool = True) -> bytes:
    data = os.urandom(size)
    offer = store.offer("alice", "carol", len(data), hashlib.sha256(data).digest(), None, [C1], device)
    store.put("alice", offer.file_id, 0, data if complete else data[: size // 2])
    return offer.file_id


def test_files_a_removed_device_uploaded_go_with_it(store):
    """The attacker's check (stop 25, #5): a device removed after it sent a file took the file's notice with
    its waiting mail, but the file stayed until --file-days, counted against the recipient's quota, with no
    notice left to fetch it. Files another device (or no device) uploaded stay."""
    fetched_part = _upload_from(store, A1)
    unfinished = _upload_from(store, A1, complete=False)
    kept = _upload_from(store, A2)
    legacy = _upload_from(store, None)  # an account without devices: not this sweep's business
    assert store.done("carol", fetched_part, C2, [C1, C2]) is False  # fetched by one device of carol's
    assert store.sending_accounts() == ["alice"]
    assert store.drop_unlisted_senders({"alice": [A1, A2]}) == 0  # nobody removed
    used = store.used("carol")
    assert store.drop_unlisted_senders({"alice": [A2]}) == 2  # A1 removed: what it uploaded goes
    assert store.row(fetched_part) is None and store.row(unfinished) is None
    assert store.row(kept) is not None and store.row(legacy) is not None
    assert store.used("carol") == used - 150  # 100 complete + 50 held of the unfinished one
    _refused("file-not-found", store.open_for, "carol", fetched_part)
    assert store.drop_unlisted_senders({"alice": []}) == 1 and store.row(legacy) is not None


def test_a_files_db_from_before_sender_devices_is_upgraded(tmp_path, clock):
    import sqlite3

    folder = tmp_path / "files"
    folder.mkdir(mode=0o700)
    old = sqlite3.connect(folder / "files.db")
    old.executescript("""CREATE TABLE files (id BLOB PRIMARY KEY, sender TEXT NOT NULL, recipient TEXT NOT NULL,
        size INTEGER NOT NULL, sha256 BLOB NOT NULL, complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
        expires REAL NOT NULL)""")
    old.execute("INSERT INTO files VALUES (?, 'alice', 'carol', 10, ?, 1, ?, ?)",
                (b"\x07" * 16, b"", clock.now, clock.now + 86400))
    old.commit()
    old.close()
    store = FileStore(folder, clock=clock)
    try:
        assert store.row(b"\x07" * 16) is not None  # kept, with no sending device
        assert store.drop_unlisted_senders({"alice": []}) == 0
        new = _upload_from(store, A1)
        assert store.drop_unlisted_senders({"alice": []}) == 1 and store.row(new) is None
    finally:
        store.close()
