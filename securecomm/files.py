"""Writing and reading files that hold secrets.

Rules, as OpenSSH and age apply them: folders 0700, private files 0600 from
the moment they exist (O_EXCL + mode at open, never chmod afterwards), atomic
replacement (temp file in the same folder + rename) so that a crash never
leaves half a key, nothing overwritten without `force` (and then the old file
is kept as NAME.bak), and private files that group or others can read are
refused when loaded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from securecomm.errors import ExistsError, FilePermissionError, NotFoundError, SecurecommError, UnsafePermissionsError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


def ensure_dir(path: Path) -> Path:
    """Create `path` and any missing parents, each with mode 0700."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir(mode=DIR_MODE)
            except FileExistsError:
                continue  # another process (a relay starting beside this one) made it first: not ours to chmod
            os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    except OSError as e:
        raise FilePermissionError(
            f"cannot create folder {path}: {e.strerror}"
        ) from e
    if not path.is_dir():
        raise ExistsError(f"{path} exists and is not a folder")
    return path


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_files(items: Iterable[tuple[Path, bytes, int]], *, force: bool = False) -> None:
    """Write several files all-or-nothing.

    Every file is first written to a temp file beside its target; only when
    all temp files exist are they renamed into place. Existing targets are
    refused unless `force`, in which case each is kept as NAME.bak (one, replaced by the next).
    A file the user names (-o) goes through AtomicOutput instead, which keeps every backup.
    """
    items = list(items)
    if not force:
        for path, _, _ in items:
            if path.exists():
                raise ExistsError(
                    f"{path} already exists", hint="use --force to replace it (the old file is kept as .bak)"
                )
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in items:
            ensure_dir(path.parent)
            temps.append((_write_temp(path, data, mode), path))
    except (OSError, SecurecommError) as e:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(e, SecurecommError):
            raise
        raise FilePermissionError(f"cannot write {e.filename or path}: {e.strerror}") from e
    if not force:
        _place_exclusively(temps)
        return
    for tmp, path in temps:
        if path.exists():
            # one NAME.bak, replaced by the next: these are keys, certificates and the client's own state,
            # whose old copies must not pile up (the re-check: every login and certgen left another)
            os.replace(path, path.with_name(path.name + ".bak"))
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _place_exclusively(temps: list[tuple[Path, Path]]) -> None:
    """Link each temp file to its target, refusing any target that exists by now.

    The check in write_files is not enough when two processes create the same files at once (two relays
    on one fresh home): between the check and the rename the other may have put its own in place, and a
    rename would replace it. A hard link is created only if the name is free, so the first process wins,
    the other gets ExistsError with nothing of its own left behind, and nothing is ever moved to .bak.
    """
    placed: list[Path] = []
    try:
        for tmp, path in temps:
            try:
                os.link(tmp, path)
            except FileExistsError:
                for done in placed:
                    with contextlib.suppress(OSError):
                        done.unlink()
                raise ExistsError(f"{path} already exists (created by another process just now)") from None
            placed.append(path)
            _fsync_dir(path.parent)
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `path`, a 0600 file created if missing, waiting for it.

    For "create it if nobody has": take the lock, look again, and create only if still missing. The
    file stays (removing a lock file lets a waiter lock an inode nobody else will see).
    """
    import fcntl

    ensure_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), PRIVATE_MODE)
    except OSError as e:
        raise FilePermissionError(f"cannot create {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_private(path: Path, data: bytes, *, force: bool = False) -> None:
    write_files([(path, data, PRIVATE_MODE)], force=force)


def check_private_mode(path: Path, what: str = "a private key") -> None:
    """Refuse a private file that group or others can read, as OpenSSH does."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise NotFoundError(f"{path} does not exist") from e
    if os.name == "posix" and st.st_mode & 0o077:
        raise UnsafePermissionsError(
            f"permissions {stat.S_IMODE(st.st_mode):04o} for {path} are too open: "
            f"{what} must not be accessible by others",
            hint=f"chmod 600 {path}",
        )


def read_private(path: Path) -> bytes:
    check_private_mode(path)
    return read_file(path)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """OSError while reading `path` -> the one-line error a user sees (read_file, open_input)."""
    try:
        yield
    except FileNotFoundError as e:
        raise NotFoundError(f"{path} does not exist") from e
    except IsADirectoryError as e:
        raise NotFoundError(f"{path} is a folder, not a file") from e
    except PermissionError as e:
        raise FilePermissionError(f"cannot read {path}: permission denied") from e
    except OSError as e:
        raise SecurecommError(f"cannot read {path}: {e.strerror}") from e


def read_file(path: Path) -> bytes:
    with _reading(path):
        return path.read_bytes()


#: Bytes of the output's name kept in its temp file's name (".NAME.<12 hex>.tmp" within 255 bytes).
TEMP_STEM_BYTES = 255 - 18


def backup_name(path: Path) -> Path:
    """Where --force keeps the file at `path`: NAME.bak, or the first free NAME.bak.N (an existing
    backup is never overwritten: the new-user check lost a file of its own named NAME.bak)."""
    candidate, n = path.with_name(path.name + ".bak"), 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}.bak.{n}")
    return candidate


def check_output(path: Path, *, force: bool) -> None:
    """A file the user named for output (-o): never a folder (not moved aside whole even under --force:
    the new-user check found it was), never over a file without `force`, never in a folder that does not
    exist (a mistyped folder is an error, not made: it was, even under /)."""
    if path.is_dir():
        raise ExistsError(f"{path} is a folder", hint=f"name a file, e.g. -o {path / 'NAME'}")
    if (path.exists() or path.is_symlink()) and not force:
        raise ExistsError(f"{path} already exists",
                          hint=f"use --force to replace it (the old file is kept as {backup_name(path).name})")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise NotFoundError(f"folder {path.parent} {what}", hint="create it first, or name another -o")


class AtomicOutput:
    """A private file written in pieces and put in place only on success.

    Used for outputs too large to hold in memory (decrypting a large file):
    the bytes go to a 0600 temp file beside `path`; `commit()` fsyncs and
    renames it into place (the old file kept as NAME.bak under `force`), and
    closing without commit deletes it, so a failure leaves nothing at `path`.
    """

    def __init__(self, path: Path, *, force: bool = False) -> None:
        check_output(path, force=force)
        self.path, self.force = path, force
        #: Where the file that was at `path` went on commit (under force), else None.
        self.kept: Path | None = None
        # the temp name adds 18 bytes: a long name (a peer may send up to 255 bytes) is cut to fit NAME_MAX
        stem = path.name.encode("utf-8", "surrogateescape")[:TEMP_STEM_BYTES].decode("utf-8", "ignore")
        self.tmp = path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         PRIVATE_MODE)
        except OSError as e:
            raise FilePermissionError(f"cannot write {path}: {e.strerror}") from e
        self.file = os.fdopen(fd, "wb")
        self.committed = False

    def write(self, data: bytes | bytearray) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if not self.force:  # never over a file that appeared meanwhile (linking fails if one is there)
            try:
                os.link(self.tmp, self.path)
            except FileExistsError as e:
                raise ExistsError(f"{self.path} already exists (created by another process just now)",
                                  hint="use --force to replace it") from e
            self.tmp.unlink()
        else:
            if self.path.exists() or self.path.is_symlink():
                self.kept = backup_name(self.path)
                os.replace(self.path, self.kept)
            os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        self.committed = True

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.file.close()
            with contextlib.suppress(OSError):
                self.tmp.unlink()


def open_input(path: Path) -> BinaryIO:
    """Open a file to read in pieces, with the errors read_file gives."""
    with _reading(path):
        if path.is_dir():
            raise IsADirectoryError
        return path.open("rb")
