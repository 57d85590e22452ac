"""store/files.py: the server's ciphertext store for files (docs/PROTOCOL.md 4.4), on a real folder and SQLite."""

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


@pytest.fixture
def store(tmp_path, clock):
    s = FileStore(tmp_path / "files", quota=1000, max_file=800, days=7, clock=clock)
    yield s
    s.close()


def _upload(store: FileStore, data: bytes, to: str = "bob", step: int = 100) -> bytes:
    offer = store.offer("alice", to, len(data), hashlib.sha256(data).digest())
    for at in range(0, len(data), step):
        received, complete = store.put("alice", offer.file_id, at, data[at : at + step])
        assert received == min(at + step, len(data)) and complete == (received == len(data))
    return offer.file_id


def _refused(kind: str, fn, *args) -> None:
    with pytest.raises(FileRefused) as e:
        fn(*args)
    assert e.value.kind == kind


def test_round_trip_and_delete_when_done(store):
    data = os.urandom(450)
    file_id = _upload(store, data)
    row, f = store.open_for("bob", file_id)
    with f:
        f.seek(100)
        assert f.read() == data[100:]
    assert row.size == 450 and row.sender == "alice"
    assert oct((store.folder / file_id.hex()).stat().st_mode & 0o777) == "0o600"
    store.done("bob", file_id)
    assert store.row(file_id) is None and not (store.folder / file_id.hex()).exists()
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
    assert store.row(offer.file_id) is None and list(store.folder.glob("*.part")) == []
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


def test_quota_counts_offers_before_their_bytes(store):
    store.offer("alice", "bob", 600, b"\0" * 32)
    _refused("file-over-quota", store.offer, "alice", "bob", 401, b"\0" * 32)
    store.offer("alice", "bob", 400, b"\0" * 32)  # exactly the quota
    store.offer("alice", "carol", 800, b"\0" * 32)  # another recipient's quota
    _refused("file-too-large", store.offer, "alice", "dave", 801, b"\0" * 32)
    _refused("file-too-large", store.offer, "alice", "dave", 0, b"\0" * 32)


def test_resume_after_restart(tmp_path, clock):
    data = os.urandom(700)
    s = FileStore(tmp_path / "f", quota=1000, max_file=800, clock=clock)
    offer = s.offer("alice", "bob", len(data), hashlib.sha256(data).digest())
    s.put("alice", offer.file_id, 0, data[:300])
    s.close()
    s = FileStore(tmp_path / "f", quota=1000, max_file=800, clock=clock)  # the running digest is gone
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
    assert store.expire() == 0
    clock.now += 2
    assert store.expire() == 2
    assert store.row(done_id) is None and store.row(unfinished) is None
    assert sorted(p.name for p in store.folder.iterdir()) == ["files.db"]


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


def test_an_offer_never_uploaded_stops_holding_the_quota_once_stalled(store, clock):
    """An attacker's check: mallory offered a file the size of bob's whole quota and sent nothing, and
    every file to bob was refused as 'storage full' for --file-days (7 days)."""
    import time

    from securecomm.store.files import UPLOAD_IDLE

    squat = store.offer("mallory", "bob", 800, b"\0" * 32)
    _refused("file-over-quota", store.offer, "alice", "bob", 300, b"\1" * 32)
    clock.now = time.time() + UPLOAD_IDLE + 1  # no byte arrived for UPLOAD_IDLE
    assert store.offer("alice", "bob", 300, b"\1" * 32).received == 0  # the stalled offer is gone
    assert store.row(squat.file_id) is None


def test_one_sender_has_at_most_max_open_uploads(store):
    """2,000 one-byte offers from one account made 2,000 part files and rows in 7 s."""
    from securecomm.store.files import MAX_OPEN_UPLOADS

    for _ in range(MAX_OPEN_UPLOADS):
        store.offer("mallory", "carol", 1, b"\0" * 32)
    _refused("file-over-quota", store.offer, "mallory", "carol", 1, b"\0" * 32)
    _refused("file-over-quota", store.offer, "mallory", "bob", 1, b"\0" * 32)  # all recipients together
    assert store.offer("alice", "carol", 1, b"\0" * 32).received == 0  # others are not affected
