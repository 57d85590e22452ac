"""`securecomm backup` during a load, `securecomm restore` into a new home, and what restore refuses."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from securecomm.cli.context import State
from securecomm.crypto import envelope
from securecomm.crypto import identity as ident
from securecomm.store.backup import integrity_problem, is_live
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_load_faults import Sender, server_line, stored_ids

CLIENTS, PER_CLIENT = 6, 150


@pytest.fixture
def srv(tmp_path):
    server = ServerProc(tmp_path / "srv", "--rate", "0").start()
    yield server
    server.stop(signal.SIGKILL)


def backup_during_load(srv: ServerProc, alice: Path, out: Path) -> tuple[set[bytes], set[bytes]]:
    """Run a load; once a quarter is receipted, back up (in a subprocess) while it goes on.
    Returns (ids receipted before the backup started, ids receipted in all)."""
    state = State(home=str(alice))
    me = ident.load(state.paths.identity_key("default"))
    server_id = ident.PublicIdentity.from_line(server_line(srv))
    senders = [Sender(state.paths, me, [envelope.seal(f"client {c} message {i}".encode(), me, server_id)
                                       for i in range(PER_CLIENT)]) for c in range(CLIENTS)]
    before: set[bytes] = set()

    async def main() -> None:
        deadline = time.monotonic() + 90
        tasks = [asyncio.create_task(s.run(deadline)) for s in senders]
        while sum(len(s.receipts) for s in senders) < CLIENTS * PER_CLIENT // 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        before.update(mid for s in senders for mid in s.receipts)
        result = await asyncio.to_thread(sc, srv.home, "backup", str(out))
        assert result.returncode == 0, result.stderr
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return before, {mid for s in senders for mid in s.receipts}


def test_backup_during_load_restores_every_receipted_message(srv, tmp_path):
    homes = users_logged_in(srv, tmp_path)
    sent = sc(homes["alice"], "send", "--to", "bob", "waiting for bob since before the backup")
    assert sent.returncode == 0, sent.stderr
    out = tmp_path / "backups" / "securecomm.db"
    out.parent.mkdir(mode=0o700)
    before, everything = backup_during_load(srv, homes["alice"], out)
    assert before and len(everything) == CLIENTS * PER_CLIENT
    assert out.stat().st_mode & 0o777 == 0o600
    assert integrity_problem(out) is None
    srv.stop()

    new_home = tmp_path / "restored"  # a new machine: the keys and the CA come from their own backup
    new_home.mkdir(mode=0o700)
    for folder in ("tls", "server"):
        shutil.copytree(srv.home / folder, new_home / folder)
    result = sc(new_home, "restore", str(out))
    assert result.returncode == 0, result.stderr
    assert b"devices removed since this backup was taken are on their accounts' lists again" in result.stderr
    assert b"messages and files stored since this backup was taken are gone" in result.stderr
    restored = ServerProc(new_home).start()
    try:
        assert before <= set(stored_ids(restored)), "a message receipted before the backup is missing"
        inbox = sc(homes["bob"], "inbox", "--server", restored.address)
        assert inbox.returncode == 0, inbox.stderr
        assert b"waiting for bob since before the backup" in inbox.stdout
    finally:
        restored.stop(signal.SIGKILL)


def test_restore_refuses_a_live_database_and_changes_nothing(srv, tmp_path):
    out = tmp_path / "b.db"
    assert sc(srv.home, "backup", str(out)).returncode == 0
    assert is_live(srv.home / "securecomm.db")
    before = (srv.home / "securecomm.db").read_bytes()
    result = sc(srv.home, "restore", "--force", str(out))
    assert result.returncode == 10
    assert b"securecomm: error: " in result.stderr and b"is live: a server is using it" in result.stderr
    assert b"Traceback" not in result.stderr
    assert (srv.home / "securecomm.db").read_bytes() == before
    srv.stop()
    assert not is_live(srv.home / "securecomm.db")
    refused = sc(srv.home, "restore", str(out))  # stopped, but it exists: only with --force
    assert refused.returncode == 10 and b"--force" in refused.stderr
    assert sc(srv.home, "restore", "--force", str(out)).returncode == 0


def test_a_second_serve_on_the_same_sqlite_file_is_refused(srv):
    """A new user's check: a second `serve` on one home also listened, and mail sent through it never
    woke the first relay's followers. One SQLite file serves one relay (several need PostgreSQL + a bus)."""
    second = sc(srv.home, "serve", "--port", "0")  # before the fix: listened until the 60 s timeout
    assert second.returncode == 10, second.stderr
    assert b"in use by another securecomm serve" in second.stderr and b"Traceback" not in second.stderr
    assert b"listening on" not in second.stderr


def test_restore_checks_integrity_first(srv, tmp_path):
    out = tmp_path / "b.db"
    assert sc(srv.home, "backup", str(out)).returncode == 0
    srv.stop()
    con = sqlite3.connect(out)
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'users'").fetchone()
    (page,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    damaged = bytearray(out.read_bytes())
    damaged[(root - 1) * page] = 0x07  # the users table's b-tree page no longer has a valid page type
    out.write_bytes(bytes(damaged))
    assert integrity_problem(out) is not None
    before = (srv.home / "securecomm.db").read_bytes()
    result = sc(srv.home, "restore", "--force", str(out))
    assert result.returncode == 6, result.stderr
    assert b"cannot be restored" in result.stderr
    assert (srv.home / "securecomm.db").read_bytes() == before


def test_restore_refuses_a_file_that_is_not_a_securecomm_database(tmp_path, home):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    result = sc(home, "restore", str(other))
    assert result.returncode == 6 and b"not a securecomm database" in result.stderr
    assert not (home / "securecomm.db").exists()


def test_backup_never_overwrites_without_force(srv, tmp_path):
    out = tmp_path / "b.db"
    out.write_bytes(b"keep me")
    result = sc(srv.home, "backup", str(out))
    assert result.returncode == 10 and out.read_bytes() == b"keep me"
    assert sc(srv.home, "backup", "--force", str(out)).returncode == 0
    assert integrity_problem(out) is None


def test_backup_of_a_missing_database_is_not_found(home, tmp_path):
    result = sc(home, "backup", str(tmp_path / "b.db"))
    assert result.returncode == 3 and b"no database at" in result.stderr


def test_backup_into_a_missing_folder_or_onto_a_folder_is_a_named_error(srv, tmp_path):
    """The new-user check: `backup /var/backups/...` with no such folder was 'internal error
    (FileNotFoundError)', exit 1."""
    result = sc(srv.home, "backup", str(tmp_path / "nodir" / "b.db"))
    assert result.returncode == 3, result.stderr
    assert result.stderr.decode().splitlines()[0] == f"securecomm: error: folder {tmp_path / 'nodir'} does not exist"
    assert b"Traceback" not in result.stderr and not (tmp_path / "nodir").exists()
    result = sc(srv.home, "backup", "--force", str(tmp_path))
    assert result.returncode == 2 and b"is a directory" in result.stderr  # Click's own check


def test_backup_refuses_the_live_databases_own_files_even_with_force(srv, tmp_path):
    """The attacker's check: `backup --force` onto securecomm.db swapped the file under the running server
    (a user added afterwards could not log in), onto its -wal corrupted it, onto its .lock freed the lock
    so that `restore` and a second `serve` went ahead. A symlink to one of them is the same file."""
    db = srv.home / "securecomm.db"
    (tmp_path / "link.db").symlink_to(db)
    for target in (db, srv.home / "securecomm.db-wal", srv.home / "securecomm.db.lock", tmp_path / "link.db"):
        before = target.read_bytes() if target.exists() else None
        r = sc(srv.home, "backup", "--force", str(target))
        assert r.returncode == 2, (target, r.stderr)
        assert b"is one of the database's own files" in r.stderr and b"Traceback" not in r.stderr
        assert (target.read_bytes() if target.exists() else None) == before or target.name.endswith("-wal")
    assert is_live(db)  # the lock still held: restore and a second serve still refused


def test_backup_refuses_the_wal_beside_a_linked_database(tmp_path):
    """The re-check: with the database a symlink to data/real.db, SQLite keeps real.db-wal beside the real
    file, and `backup --force data/real.db-wal` replaced it."""
    import sqlite3 as sq

    data, home = tmp_path / "data", tmp_path / "home"
    data.mkdir()
    home.mkdir()
    assert sc(home, "user", "add", "alice", "--password-stdin", input=b"violet tractor umbrella\n").returncode == 0
    (home / "securecomm.db").rename(data / "real.db")
    (home / "securecomm.db").symlink_to(data / "real.db")
    held = sq.connect(data / "real.db")  # a live WAL, as under a running server
    held.execute("PRAGMA journal_mode=WAL")
    held.execute("CREATE TABLE IF NOT EXISTS t (x)")
    held.execute("INSERT INTO t VALUES (1)")
    held.commit()
    try:
        for target in (data / "real.db-wal", data / "real.db-shm", data / "real.db"):
            r = sc(home, "backup", "--force", str(target))
            assert r.returncode == 2 and b"is one of the database's own files" in r.stderr, (target, r.stderr)
    finally:
        held.close()
