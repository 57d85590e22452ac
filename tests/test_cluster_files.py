"""Files through the server on several relays (issue 13): with --db postgresql:// the rows and the
ciphertext live in PostgreSQL, so a file uploaded through relay A is fetched through relay B, and an
upload cut by a `kill -9` of A resumes through B from what A had stored. Real relays, real TLS, one
private PostgreSQL and nats-server (tests/cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import signal

import pytest

from securecomm.client import files as F
from securecomm.client.connection import Client
from securecomm.client.trust import resolve_trust
from securecomm.paths import Paths
from securecomm.store.pgfiles import PgFileStore
from securecomm.wire.files import CHUNK, FileAck, FilePut
from tests.relays import LOAD, WAIT, make_users, start_relays, stop_all
from tests.serverproc import ServerProc

SIZE = 3 * CHUNK + 777  # several FILE_PUT chunks, a partial last one


@pytest.fixture
def cluster(tmp_path, pg_url, nats_server):
    """Relays A and B on separate data folders, as on two machines: B's is a copy of A's CA, certificate
    and message identity (README: several relays), with nothing of A's files folder."""
    (a,) = start_relays(tmp_path / "srv", pg_url, nats_server.url, 1)
    shutil.copytree(a.home, tmp_path / "srv-b", ignore=shutil.ignore_patterns("files", "*.sqlite*", "*.log"))
    b = ServerProc(tmp_path / "srv-b", "--db", pg_url, "--bus", nats_server.url, *LOAD).start()
    users = make_users(pg_url, ["alice", "bob"])
    yield (a, b), users, pg_url, tmp_path
    stop_all([a, b])


async def _login(tmp_path, name, me, port) -> Client:
    home = tmp_path / "clients" / name
    home.mkdir(parents=True, exist_ok=True)
    trust = resolve_trust(Paths(home, home), "localhost", port, ca=str(tmp_path / "srv" / "tls" / "ca.pem"))
    client = Client("localhost", port, trust)
    await client.connect()
    await client.login_key(name, me)
    return client


def _sealed(tmp_path, users, body: bytes) -> F.Sealed:
    return F.seal_to_temp(io.BytesIO(body), "report.bin", users["alice"], users["bob"].public, tmp_path / "outgoing")


async def _fetch(tmp_path, users, port, sealed: F.Sealed, file_id: bytes) -> bytes:
    """bob downloads through the relay at `port`, opens it with alice's key, and deletes it there."""
    async def connect():
        return await _login(tmp_path, "bob", users["bob"], port), None

    out = tmp_path / f"{file_id.hex()}.out"
    warnings: list[str] = []
    # the CLI's own path (fetch_file): downloads, opens while downloading, file_done on the same relay
    await asyncio.wait_for(F.fetch_file(connect, users["bob"], sealed.notice(file_id), users["alice"].public, out,
                                        False, WAIT, warnings.append, lambda size, label: contextlib.nullcontext()),
                           WAIT)
    assert warnings == []
    return out.read_bytes()


def _stored(url: str, file_id: bytes):
    files = PgFileStore(url)
    try:
        return files.row(file_id)
    finally:
        files.close()


def test_uploaded_through_one_relay_fetched_through_another(cluster):
    (a, b), users, url, tmp = cluster
    body = os.urandom(SIZE)
    sealed = _sealed(tmp, users, body)

    async def go() -> bytes:
        alice = await _login(tmp, "alice", users["alice"], a.port)
        try:
            file_id, received = await F.offer(alice, "bob", sealed)
            assert received == 0
            await asyncio.wait_for(F.put_all(alice, file_id, sealed, 0), WAIT)
        finally:
            await alice.close()
        assert _stored(url, file_id).complete
        got = await _fetch(tmp, users, b.port, sealed, file_id)
        assert _stored(url, file_id) is None  # file_done through B deleted what A received
        return got

    assert asyncio.run(go()) == body
    for relay in (a, b):  # nothing of it on either relay's disk
        assert not (relay.home / "files").exists() or list((relay.home / "files").iterdir()) == []


def test_an_upload_cut_by_killing_its_relay_resumes_through_another(cluster):
    (a, b), users, _url, tmp = cluster
    body = os.urandom(SIZE)
    sealed = _sealed(tmp, users, body)
    data = sealed.path.read_bytes()

    async def go() -> tuple[int, bytes]:
        first = await _login(tmp, "alice", users["alice"], a.port)
        file_id, _ = await F.offer(first, "bob", sealed)
        for at in range(0, 2 * CHUNK, CHUNK):
            first.send_event(FilePut(file_id, at, data[at : at + CHUNK]))
        for _ in range(2):
            ack = await F._next_event(first, (FileAck,))
        assert ack.received == 2 * CHUNK and not ack.complete
        a.stop(signal.SIGKILL)  # mid-upload: relay A is gone with its running digest
        await first.close()
        second = await _login(tmp, "alice", users["alice"], b.port)
        try:
            again, received = await F.offer(second, "bob", sealed, file_id)
            assert again == file_id
            await asyncio.wait_for(F.put_all(second, file_id, sealed, received), WAIT)
        finally:
            await second.close()
        got = await _fetch(tmp, users, b.port, sealed, file_id)
        return received, got

    received, got = asyncio.run(go())
    assert received == 2 * CHUNK  # not from zero: what A had committed
    assert got == body and hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


def test_a_download_through_one_relay_follows_an_upload_through_another(cluster):
    """Cut-through across relays (docs/PROTOCOL.md 4.4): bob's file_get through B starts when alice has
    sent one chunk through A, gets what B finds in PostgreSQL, and sees each later chunk (no wake-up
    crosses relays: B looks again within 0.25 s) up to the whole file."""
    (a, b), users, url, tmp = cluster
    body = os.urandom(SIZE)
    sealed = _sealed(tmp, users, body)
    data = sealed.path.read_bytes()

    async def go() -> bytes:
        alice = await _login(tmp, "alice", users["alice"], a.port)
        try:
            file_id, _ = await F.offer(alice, "bob", sealed)
            alice.send_event(FilePut(file_id, 0, data[:CHUNK]))
            assert (await F._next_event(alice, (FileAck,))).received == CHUNK
            fetching = asyncio.ensure_future(_fetch(tmp, users, b.port, sealed, file_id))
            for at in range(CHUNK, len(data), CHUNK):
                assert not fetching.done()  # it waits for the rest: the upload is unfinished
                alice.send_event(FilePut(file_id, at, data[at : at + CHUNK]))
                ack = await F._next_event(alice, (FileAck,))
            assert ack.complete
            got = await asyncio.wait_for(fetching, WAIT)
        finally:
            await alice.close()
        assert _stored(url, file_id) is None  # fetched and deleted through B
        return got

    assert asyncio.run(go()) == body


def test_each_device_fetches_through_its_own_relay_and_the_last_one_deletes(tmp_path, pg_url, nats_server):
    """Several devices on PostgreSQL (docs/PROTOCOL.md 4.4, migration 9): carol's laptop on relay A and her
    phone on relay B, paired through the CLI; alice sends a file through A. The laptop's fetch (A) leaves
    the one copy in the database for the phone, whose fetch (B) deletes it; both get the same bytes.
    Before: the first fetch deleted it, and the phone's stream was sealed to the laptop's key (exit 6)."""
    import json

    from securecomm.store import passwords
    from securecomm.store.postgres import PostgresStore
    from tests.serverproc import PASSWORD, login, sc
    from tests.test_multidevice_cli import pair_second_device

    (a,) = start_relays(tmp_path / "srv", pg_url, nats_server.url, 1)
    shutil.copytree(a.home, tmp_path / "srv-b", ignore=shutil.ignore_patterns("files", "*.sqlite*", "*.log"))
    b = ServerProc(tmp_path / "srv-b", "--db", pg_url, "--bus", nats_server.url, *LOAD).start()
    try:
        store = PostgresStore(pg_url)
        try:
            for name in ("alice", "carol"):
                store.add_user(name, passwords.hash_password(PASSWORD))
        finally:
            store.close()
        homes = {name: tmp_path / name for name in ("alice", "carol")}
        for name, home in homes.items():
            assert login(home, a, name).returncode == 0
        phone = tmp_path / "carol-phone"
        pair_second_device(b, homes["carol"], phone, "carol")  # the phone talks to relay B
        body = os.urandom(SIZE)
        src = tmp_path / "plan.bin"
        src.write_bytes(body)
        r = sc(homes["alice"], "send", "--to", "carol", "--file", str(src), "--json")
        assert r.returncode == 0, r.stderr
        file_id = json.loads(r.stdout)["file_id"]
        for n, home in enumerate((homes["carol"], phone)):
            assert file_id.encode() in sc(home, "inbox").stdout
            r = sc(home, "fetch", file_id, "-o", str(tmp_path / f"got-{n}.bin"))
            assert r.returncode == 0, r.stderr
            assert (tmp_path / f"got-{n}.bin").read_bytes() == body
            assert (_stored(pg_url, bytes.fromhex(file_id)) is not None) == (n == 0)
    finally:
        stop_all([a, b])
