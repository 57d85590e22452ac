"""The SQLite store and password hashing, without a server."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from securecomm.errors import ExistsError, UsageError
from securecomm.store import passwords
from securecomm.store.db import MIGRATIONS, NewMessage, Store, normalise_name


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data" / "db.sqlite")
    yield s
    s.close()


def test_schema_version_and_pragmas(store, tmp_path):
    assert store.schema_version == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert stat.S_IMODE((tmp_path / "data" / "db.sqlite").stat().st_mode) == 0o600


def test_reopen_does_not_migrate_twice(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    s = Store(path)
    assert s.schema_version == len(MIGRATIONS)
    s.close()


@pytest.mark.parametrize("bad", ["", "a" * 33, "al ice", "x'; DROP TABLE users;--", "ümlaut", "a/b",
                                 "alice\n", "\u212aate"])  # trailing newline; KELVIN SIGN lowers to "k"
def test_bad_names(bad):
    with pytest.raises(UsageError):
        normalise_name(bad)


def test_names_fold_ascii_case_only():
    assert normalise_name("Alice.B_2-x") == "alice.b_2-x"


def test_names_are_case_insensitive_unique(store):
    store.add_user("Alice", "h")
    assert store.get_user("ALICE").name == "alice"
    with pytest.raises(ExistsError):
        store.add_user("alice", "h")


def test_injection_shaped_lookup_is_just_a_miss(store):
    store.add_user("bob", "h")
    assert store.get_user("bob' OR '1'='1") is None
    assert [u.name for u in store.list_users()] == ["bob"]


def test_lockout_after_failures(store):
    u = store.add_user("carol", "h")
    for _ in range(4):
        store.record_login(u.id, False)
    assert not store.get_user("carol").locked()
    store.record_login(u.id, False)
    assert store.get_user("carol").locked()
    store.set_password("carol", "h2")
    assert not store.get_user("carol").locked()


def test_group_commit_dedupes(store):
    u = store.add_user("dave", "h")
    m = NewMessage(u.id, b"i" * 16, b"d" * 32, 1, b"env")
    first = store.store_messages([m, m])
    assert [r.duplicate for r in first] == [False, True]
    again = store.store_messages([m])
    assert again[0].duplicate and again[0].stored_at_ms == first[0].stored_at_ms
    assert store.count_messages() == 1


def test_sql_is_parameterised():
    # every execute() in the store passes values as parameters: no f-string or % near SQL
    import inspect

    from securecomm.store import db

    source = inspect.getsource(db)
    # the one exception: PRAGMA takes no parameters, and the value is int()-cast
    source = source.replace('execute(f"PRAGMA user_version = {int(number)}")', "")
    assert 'execute(f"' not in source and "execute(f'" not in source and '" %' not in source


def test_argon2id_parameters_and_verify():
    h = passwords.hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password("correct horse", h)
    assert not passwords.verify_password("wrong horse", h)
    assert not passwords.verify_password("correct horse", "not a hash")
    assert not passwords.needs_rehash(h)


def test_weaker_hash_needs_rehash():
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    weak = Argon2id(salt=b"s" * 16, length=32, iterations=1, lanes=1, memory_cost=8192).derive_phc_encoded(b"pw")
    assert passwords.needs_rehash(weak)
    assert passwords.verify_password("pw", weak)


@pytest.mark.parametrize("pw", ["short", ""])
def test_password_policy(pw):
    with pytest.raises(UsageError):
        passwords.check_policy(pw)


def test_database_file_is_plain_sqlite(store, tmp_path):
    store.add_user("erin", passwords.hash_password("long enough"))
    con = sqlite3.connect(tmp_path / "data" / "db.sqlite")
    (phc,) = con.execute("SELECT password_hash FROM users WHERE name = ?", ("erin",)).fetchone()
    assert "long enough" not in phc and phc.startswith("$argon2id$")
