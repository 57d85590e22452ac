"""File safety: modes, atomic writes, no silent overwrite, refusing open keys."""

from __future__ import annotations

import os
import stat

import pytest

from securecomm import files
from securecomm.errors import ExistsError, FilePermissionError, NotFoundError, SecurecommError


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_private_file_and_folder_modes(tmp_path):
    target = tmp_path / "a" / "b" / "key"
    files.write_private(target, b"secret")
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700
    assert mode(target.parent.parent) == 0o700
    assert target.read_bytes() == b"secret"


def test_no_overwrite_without_force(tmp_path):
    target = tmp_path / "key"
    files.write_private(target, b"one")
    with pytest.raises(ExistsError) as e:
        files.write_private(target, b"two")
    assert "--force" in e.value.hint
    assert target.read_bytes() == b"one"


def test_force_keeps_backup(tmp_path):
    target = tmp_path / "key"
    files.write_private(target, b"one")
    files.write_private(target, b"two", force=True)
    assert target.read_bytes() == b"two"
    assert (tmp_path / "key.bak").read_bytes() == b"one"
    assert mode(tmp_path / "key.bak") == 0o600


def test_all_or_nothing_leaves_no_temp_files(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(SecurecommError):
        files.write_files([(tmp_path / "ok", b"1", 0o600), (blocker / "x", b"2", 0o600)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_readable_private_key_is_refused_with_chmod_hint(tmp_path):
    target = tmp_path / "key"
    files.write_private(target, b"secret")
    os.chmod(target, 0o644)
    with pytest.raises(FilePermissionError) as e:
        files.read_private(target)
    assert str(target) in e.value.message
    assert e.value.hint == f"chmod 600 {target}"
    os.chmod(target, 0o600)
    assert files.read_private(target) == b"secret"


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        files.read_private(tmp_path / "missing")


def test_an_output_with_the_longest_name_a_peer_may_send_is_written(tmp_path):
    """A name of 255 bytes (the notice's limit): its temp name is cut to fit (the spec-only client's
    check: names of 240-255 bytes failed with "cannot write")."""
    from securecomm.files import AtomicOutput

    name = "\u00e9" * 127 + "x"
    assert len(name.encode()) == 255
    with AtomicOutput(tmp_path / name) as out:
        assert len(out.tmp.name.encode()) <= 255
        out.write(b"whole")
        out.commit()
    assert (tmp_path / name).read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == [name]


def test_force_never_overwrites_an_existing_backup(tmp_path):
    """The new-user check: `fetch -o f.txt --force` replaced the user's own f.txt.bak."""
    from securecomm.files import AtomicOutput

    target = tmp_path / "f.txt"
    target.write_bytes(b"current")
    (tmp_path / "f.txt.bak").write_bytes(b"my precious backup")
    with AtomicOutput(target, force=True) as out:
        out.write(b"new")
        out.commit()
    assert out.kept == tmp_path / "f.txt.bak.2"
    assert [target.read_bytes(), (tmp_path / "f.txt.bak").read_bytes(), out.kept.read_bytes()] == \
        [b"new", b"my precious backup", b"current"]
    # keys and the client's own files keep one backup, replaced by the next: old private keys must not
    # pile up (the re-check: every certgen --force and login left another .bak.N)
    key = tmp_path / "id.key"
    for n in range(3):
        files.write_files([(key, f"key {n}".encode(), files.PRIVATE_MODE)], force=True)
    assert sorted(p.name for p in tmp_path.glob("id.key*")) == ["id.key", "id.key.bak"]
    assert (tmp_path / "id.key.bak").read_bytes() == b"key 1"


def test_an_output_folder_is_neither_made_nor_moved_aside(tmp_path):
    """The new-user check: -o /nonexistent/dir/x made /nonexistent/dir; -o DIR --force moved DIR aside
    (and with DIR.bak present: 'internal error (OSError)')."""
    from securecomm.files import AtomicOutput

    with pytest.raises(NotFoundError, match="does not exist"):
        AtomicOutput(tmp_path / "no" / "such" / "x.txt")
    assert not (tmp_path / "no").exists()
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "inside").write_bytes(b"kept")
    with pytest.raises(ExistsError, match="is a folder") as e:
        AtomicOutput(folder, force=True)
    assert e.value.exit_code == 10 and (folder / "inside").read_bytes() == b"kept"
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]  # no temp file left either
