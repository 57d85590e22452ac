"""The client's half of files through the server (docs/PROTOCOL.md 4.4): upload, download, resume.

Theory of operation
-------------------
    send --file:  file_offer {size: the stream's exact size, computed before sealing} ──►
                  a thread seals the file (streaming envelope, crypto/stream.py) while FILE_PUT …
                  (WINDOW in flight) sends what it has sealed ──► FILE_ACK complete
                  ──► a DIRECT carrying the FileNotice (name, sizes, digests, file key)
    fetch ID:     the notice saved when `inbox` showed it ──► file_get ──► FILE_DATA handed to a
                  thread that opens the stream into a temp file beside OUT as it arrives (and hashes
                  the ciphertext) ──► every check passed ──► renamed ──► file_done (the server deletes it)

Sealing and uploading overlap, and so do downloading and opening: the bytes
go between the thread and the connection in memory, at most a few MiB
(`SealedPipe`, `Feed`; the side that is ahead waits), so memory stays flat
whatever the size, and no ciphertext is written to the client's disk (on a
VM, writing fresh page cache cost more than the cryptography). A dropped
connection resumes from the last byte the other side confirmed: the
server's `received` for an upload (file_offer with the same file_id), what
the opener was handed for a download; the threads wait meanwhile. An
interrupted command starts over when run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from securecomm.crypto import stream
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same
from securecomm.crypto.stream import Piece
from securecomm.errors import (
    DeviceRemovedError,
    FileGoneError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    SecurecommError,
    StoreUnavailableError,
    UsageError,
)
from securecomm.wire.files import CHUNK, OVERHEAD, FileAck, FileData, FileNotice, FilePut, chunk_size

#: FILE_PUT frames in flight before waiting for an acknowledgement: 16 x 256 KiB (what the server
#: queues per session) keeps a loopback or LAN link busy while bounding what is unacknowledged.
WINDOW = 16
#: Seconds to wait for each acknowledgement or data frame before calling the link dead.
STALL_TIMEOUT = 30.0
#: Reads from the plaintext while sealing (whole stream chunks).
READ_SIZE = 16 * stream.CHUNK_SIZE

Progress = Callable[[int], None]
#: Whom a file is sealed for: a device identity (version 1: the stream's HPKE part opens the key), or the
#: 32-byte user key fingerprint of an account (version 2, docs/PROTOCOL.md 2.6.1: the key travels only in
#: the notice, to every device of the account, sealed to one-time prekeys).
Target = PublicIdentity | bytes


def _stream_of(blocks: Iterator[bytes], me: PrivateIdentity, to: Target, key: bytes,
               summary: Callable[[int, bytes], None]) -> Iterator[Piece]:
    if isinstance(to, bytes):
        return stream.seal_detached(blocks, me, to, key, summary=summary)
    return stream.seal(blocks, me, to, file_key=key, summary=summary)


def stream_size_for(plain_size: int, to: Target) -> int:
    """The exact stream size of `plain_size` bytes sealed for `to` (known before sealing: the offer)."""
    return stream.sealed_size_detached(plain_size) if isinstance(to, bytes) else stream.sealed_size(plain_size, to.kem)


@dataclass
class Sealed:
    """A sealed file: its sizes, digests and key (`path`: the temp file holding it, if there is one)."""

    path: Path | None
    name: str
    size: int
    sha256: bytes
    stream_size: int
    stream_sha256: bytes
    key: bytes

    def notice(self, file_id: bytes) -> FileNotice:
        return FileNotice(file_id, self.name, self.size, self.sha256, self.stream_size, self.stream_sha256,
                          self.key)


def seal_to_temp(src: BinaryIO, name: str, me: PrivateIdentity, to: Target, folder: Path,
                 progress: Progress | None = None) -> Sealed:
    """Seal `src` to `to` into a 0600 temp file in `folder`, noting plaintext and ciphertext digests
    (for a source of unknown length, a pipe: the offer needs the size). The plaintext's digest is the
    one the stream computes for its signature (one pass, not two); the ciphertext's is computed on a
    second thread while the next run is sealed."""
    key, cipher = os.urandom(stream.FILE_KEY_SIZE), stream.BackgroundDigest()
    plain: list[tuple[int, bytes]] = []  # (length, sha256), told by the stream before its trailer
    stream_size = 0

    def blocks() -> Iterator[bytes]:
        while block := src.read(READ_SIZE):
            if progress:
                progress(len(block))
            yield block

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f".upload-{os.urandom(6).hex()}.sce"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in _stream_of(blocks(), me, to, key, lambda n, d: plain.append((n, d))):
                cipher.update(piece)
                stream_size += len(piece)
                out.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Sealed(path, name, plain[0][0], plain[0][1], stream_size, cipher.digest(), key)


class Feed:
    """FILE_DATA from the event loop to the thread opening the stream, in memory: at most LIMIT bytes
    waiting (then the download stops reading its connection until the opener catches up).
    `received` is how much the loop has handed over: a dropped connection resumes from there."""

    LIMIT = 8 * CHUNK
    #: The loop reads again once the opener has brought the queue down to this.
    LOW = 2 * CHUNK

    def __init__(self, final: int, loop: asyncio.AbstractEventLoop) -> None:
        self.final, self.received = final, 0
        self.stopped = threading.Event()
        self._blocks: deque[bytes] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._loop = loop
        self._room: asyncio.Future[None] | None = None

    # -- the event loop --
    def push(self, data: bytes) -> None:
        with self._cond:
            self._blocks.append(data)
            self._queued += len(data)
            self._cond.notify()
        self.received += len(data)

    def full(self) -> bool:
        return self._queued >= self.LIMIT

    def room(self) -> asyncio.Future[None]:
        """Resolved once the opener has taken the queue down to LOW."""
        fut = self._loop.create_future()
        with self._cond:
            if self._queued <= self.LOW:
                fut.set_result(None)
            else:
                self._room = fut
        return fut

    def stop(self) -> None:
        """The download gave up: the opening thread stops (NetworkError) at its next read."""
        self.stopped.set()
        with self._cond:
            self._cond.notify_all()

    # -- the opening thread --
    def blocks(self) -> Iterator[bytes]:
        """The stream's bytes in order as they arrive, to `final`."""
        taken = 0
        while taken < self.final:
            with self._cond:
                while not self._blocks and not self.stopped.is_set():
                    self._cond.wait()
                if self.stopped.is_set():
                    raise NetworkError("the download ended before the file was complete")
                block = self._blocks.popleft()
                self._queued -= len(block)
                room = self._room if self._queued <= self.LOW else None
                if room is not None:
                    self._room = None
            if room is not None:
                self._loop.call_soon_threadsafe(_set_done, room)
            taken += len(block)
            yield block


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SealedPipe:
    """The stream, from the sealing thread to the uploader, in memory: what is sealed and not yet
    acknowledged by the server, at most LIMIT bytes (the sealing thread waits for room). A dropped
    connection resumes from the server's `received`, which is never behind what it acknowledged."""

    #: Bytes held: the upload's window in flight plus as much again sealed ahead.
    LIMIT = 2 * WINDOW * CHUNK

    def __init__(self, final: int, loop: asyncio.AbstractEventLoop) -> None:
        self.final, self.length, self.done = final, 0, False
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self._pieces: deque[Piece] = deque()
        self._base = 0  # the stream offset of _pieces[0]
        self._held = 0  # bytes in _pieces and on their way to it (the sealing thread's count)
        self._cond = threading.Condition()
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    # -- the sealing thread --
    def put(self, piece: Piece) -> None:
        with self._cond:
            while self._held >= self.LIMIT and not self.stopped.is_set():
                self._cond.wait()
            if self.stopped.is_set():
                raise NetworkError("the upload ended before the file was sealed")
            self._held += len(piece)
        self._loop.call_soon_threadsafe(self._add, piece)

    def stop(self) -> None:
        self.stopped.set()
        with self._cond:
            self._cond.notify_all()

    # -- the event loop --
    def _add(self, piece: Piece) -> None:
        self._pieces.append(piece)
        self.length += len(piece)
        self._wake()

    def finish(self, error: BaseException | None) -> None:
        self.done, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    def changed(self) -> asyncio.Future[None]:
        """Resolved at the next piece or at the end of sealing."""
        if self._waiter is None:
            self._waiter = self._loop.create_future()
        return self._waiter

    def read(self, offset: int, n: int) -> bytes:
        """`n` bytes at `offset` (all sealed and still held)."""
        if offset < self._base:
            raise IntegrityError("the server lost part of the upload it had acknowledged",
                                 hint="send the file again")
        skip, parts = offset - self._base, []
        for piece in self._pieces:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            parts.append(memoryview(piece)[skip : skip + n])
            n -= len(parts[-1])
            skip = 0
            if not n:
                break
        return b"".join(parts)

    def release(self, upto: int) -> None:
        """The server holds everything before `upto`: let go of it, making room for the sealing thread."""
        freed = 0
        while self._pieces and self._base + len(self._pieces[0]) <= upto:
            piece = self._pieces.popleft()
            self._base += len(piece)
            freed += len(piece)
        if freed:
            with self._cond:
                self._held -= freed
                self._cond.notify_all()


class _FileSource:
    """A stream already sealed into a file (a pipe's input, sealed before the offer), as _put_loop reads it."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.final, self.length, self.done, self.error = f, size, size, True, None

    def read(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)

    def release(self, upto: int) -> None:
        pass

    def changed(self) -> asyncio.Future[None]:  # pragma: no cover - done from the start: never awaited
        raise AssertionError("a sealed file does not grow")


def seal_to_pipe(src: BinaryIO, name: str, me: PrivateIdentity, to: Target, pipe: SealedPipe, key: bytes) -> Sealed:
    """On a thread: seal `src` to `to` under the file key `key` into `pipe` (waiting whenever the pipe is
    full), noting the plaintext's digest (the stream's own, which its final signature covers). No digest
    of the ciphertext: the early notice names none (docs/PROTOCOL.md 4.4), so `stream_sha256` is b""."""
    plain: list[tuple[int, bytes]] = []
    stream_size = 0
    before = _version_of(src)

    def blocks() -> Iterator[bytes]:
        while block := src.read(READ_SIZE):
            yield block

    for piece in _stream_of(blocks(), me, to, key, lambda n, d: plain.append((n, d))):
        pipe.put(piece)
        stream_size += len(piece)
    if _version_of(src) != before:  # the pipe holds the final byte back until sealing ended well (_sendable)
        # bytes rewritten in place, the size unchanged, made a file that never existed, "verified" (new-user
        # check); before, only a change of size was caught
        raise UsageError("the file changed while it was being sent", hint="send it again once it is written")
    return Sealed(None, name, plain[0][0], plain[0][1], stream_size, b"", key)


def _version_of(src: BinaryIO) -> tuple[int, ...] | None:
    """What changes when a file is written: its size, times and inode (None: not a file we can stat)."""
    try:
        st = os.fstat(src.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


async def _next_event(client: Any, kinds: tuple[type, ...], timeout: float = STALL_TIMEOUT) -> Any:
    """The next pushed event of one of `kinds`; other pushes (mail offered to this quiet session) are
    left alone: unacknowledged, they stay on the server."""
    while True:
        try:
            ev = await asyncio.wait_for(client.events.get(), timeout)
        except TimeoutError as e:
            raise NetworkError("the server stopped answering during the file transfer") from e
        if isinstance(ev, SecurecommError):
            raise ev
        if isinstance(ev, kinds):
            return ev


async def _raced(client: Any, work: Awaitable[Any], about: bytes) -> Any:
    """`work`, failing at once if the server sends a (non-fatal) ERROR naming the file."""
    errors = client._expect(("msg", about))
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task, errors}, return_when=asyncio.FIRST_COMPLETED)
        if errors in done:
            task.cancel()
            raise errors.exception() or IntegrityError("the server refused the file")
        return task.result()
    finally:
        client._waiters.pop(("msg", about), None)
        if not errors.done():
            errors.cancel()
        if not task.done():  # we were cancelled (Ctrl-C, SIGTERM): the work stops with us
            task.cancel()
        task.add_done_callback(_retrieved)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's error as seen: it was answered another way (not "never retrieved")."""
    if not fut.cancelled():
        fut.exception()


# -- upload -----------------------------------------------------------------------------------
async def offer(client: Any, to: str, sealed: Sealed | SealedPipe, file_id: bytes | None = None) -> tuple[bytes, int]:
    """file_offer: a Sealed file names its digest; one still being sealed (SealedPipe) only its size,
    which the recipient's checks make enough (docs/PROTOCOL.md 4.4)."""
    args: dict[str, Any] = {"to": to}
    if isinstance(sealed, SealedPipe):
        args["size"] = sealed.final
    else:
        args.update(size=sealed.stream_size, sha256=sealed.stream_sha256.hex())
    if file_id is not None:
        args["file_id"] = file_id.hex()
    data = await client.request("file_offer", **args)
    try:
        got, received = bytes.fromhex(data["file_id"]), int(data["received"])
    except (TypeError, KeyError, ValueError) as e:
        raise IntegrityError("the server sent a malformed answer to file_offer") from e
    size = args["size"]
    if len(got) != 16 or (file_id is not None and got != file_id) or not 0 <= received <= size:
        raise IntegrityError("the server sent a malformed answer to file_offer")
    return got, received


async def put_all(client: Any, file_id: bytes, sealed: Sealed | SealedPipe, received: int,
                  progress: Progress | None = None) -> None:
    """FILE_PUT from `received` to the end, WINDOW frames in flight; returns when the server has it all.
    A SealedPipe is sent as it is sealed; its last chunk only once sealing ended at the offered size."""
    if isinstance(sealed, SealedPipe):
        await _raced(client, _put_loop(client, file_id, received, sealed, progress), file_id)
        return
    assert sealed.path is not None
    with sealed.path.open("rb") as f:
        await _raced(client, _put_loop(client, file_id, received, _FileSource(f, sealed.stream_size), progress),
                     file_id)


def _sendable(src: SealedPipe | _FileSource) -> int:
    """How far FILE_PUTs may go now: what is sealed, but not the last byte before sealing is over (so
    the server never completes a file whose sealing failed or came out another size)."""
    if not src.done:
        return min(src.length, src.final - 1)
    if src.error is not None:
        raise src.error
    if src.length != src.final:
        raise UsageError("the file changed while it was being sent", hint="send it again once it is written")
    return src.final


async def _put_loop(client: Any, file_id: bytes, offset: int, src: SealedPipe | _FileSource,
                    progress: Progress | None) -> None:
    in_flight: deque[int] = deque()
    acked, size, ack_next = offset, src.final, None
    src.release(offset)  # a resumed upload: the server holds that much
    chunk = chunk_size(getattr(client, "max_send", CHUNK + OVERHEAD))
    try:
        while True:
            end = _sendable(src)
            while len(in_flight) < WINDOW and (end - offset >= chunk or (end == size and offset < size)):
                data = src.read(offset, min(chunk, end - offset))
                if not data:
                    raise IntegrityError("the sealed file is shorter than it was")
                client.send_event(FilePut(file_id, offset, data))
                offset += len(data)
                in_flight.append(offset)
            waits: set[asyncio.Future[Any]] = set()
            if in_flight:
                ack_next = ack_next or asyncio.ensure_future(_next_event(client, (FileAck,)))
                waits.add(ack_next)
            if not src.done and len(in_flight) < WINDOW and offset < size:
                waits.add(src.changed())  # more to seal before the window fills
            if not waits:
                raise IntegrityError("the server's answer to file_offer disagrees with the file's size")
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if ack_next is None or not ack_next.done():
                continue
            ack: FileAck = ack_next.result()
            ack_next = None
            if ack.file_id != file_id or not in_flight or ack.received != in_flight.popleft():
                raise IntegrityError("the server acknowledged bytes that were not sent")
            src.release(ack.received)
            if progress:
                progress(ack.received - acked)
            acked = ack.received
            if ack.complete != (acked == size):
                raise IntegrityError("the server's acknowledgement disagrees with the file's size")
            if ack.complete:
                return
    finally:
        if ack_next is not None:
            ack_next.cancel()  # (nothing if done)
            # a dropped link's error, already answered; or one it raised as the cancel landed (the re-check:
            # a device removed mid-upload printed "Task exception was never retrieved" and a traceback)
            ack_next.add_done_callback(_retrieved)


# -- download ---------------------------------------------------------------------------------
def notices_dir(paths: Any) -> Path:
    return Path(paths.data_dir) / "received"  # not "files": a server with the same --home keeps ciphertext there


def save_long_message(paths: Any, sender: str, msg_id: bytes, body: bytes) -> str:
    """Keep the whole of a message too long to show on a terminal (0600, in a 0700 folder of the
    home): it is acknowledged once shown, so the server keeps no copy. Named by sender and id, and
    never written over (the re-check: another sender who reused the id replaced the kept text): a
    second file gets a number. Returns the path."""
    folder = paths.messages_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = f"{local_name(sender)}-{msg_id.hex()}"
    for n in range(1000):
        path = folder / (f"{stem}.txt" if n == 0 else f"{stem}.{n}.txt")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.read_bytes() == body:  # the same message shown again (a redelivery)
                return str(path)
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        return str(path)
    raise UsageError(f"too many kept messages named {stem} in {folder}")


def save_notice(paths: Any, sender: str, notice: FileNotice, device: str | None = None) -> bool:
    """Remember a notice (inbox showed it) so that `fetch ID` knows name, digests and key. 0600.
    `device`: the identity line of the device that announced it (version 2), whose key signed the file.
    False (nothing written) if another notice for this file id is saved or was fetched: the first one
    stays; the same notice again (a message shown twice) is True."""
    folder = notices_dir(paths)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{notice.file_id.hex()}.json"
    record = {"from": sender, "notice": notice.encode().decode(), **({"device": device} if device else {})}
    if path.exists() or (folder / f"{notice.file_id.hex()}.fetched").exists():
        try:
            return bool(json.loads(path.read_text()) == record)
        except (OSError, ValueError):
            return False
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(tmp, path)
    return True


def forget_notice(paths: Any, file_id: bytes, saved_to: Path) -> None:
    """After a fetch: delete the notice (it holds the file key) and keep only where the file went, so
    that a second `fetch ID` says so instead of "no received file" (new-user check)."""
    _replace_notice(paths, file_id, "fetched", {"path": str(saved_to.resolve())})


def forget_gone(paths: Any, file_id: bytes) -> None:
    """The server says the file is not there (its sender cancelled, it expired or was deleted): delete
    the notice, which holds the file's key, and remember when, so that `fetch ID` says so again (the
    new-user check: the key of a cancelled upload stayed on the device)."""
    _replace_notice(paths, file_id, "gone", {})


def _replace_notice(paths: Any, file_id: bytes, kind: str, record: dict[str, Any]) -> None:
    """Put a `.KIND` record (with the time) in place of the notice, then delete the notice and its key."""
    folder = notices_dir(paths)
    target = folder / f"{file_id.hex()}.{kind}"
    tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({**record, "at": int(time.time())}, out)
    os.replace(tmp, target)
    (folder / f"{file_id.hex()}.json").unlink(missing_ok=True)


def _fetched_record(paths: Any, file_id_hex: str) -> str | None:
    try:
        record = json.loads((notices_dir(paths) / f"{file_id_hex}.fetched").read_text())
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(record["at"])))
        return f"{record['path']} on {when}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def local_name(name: str) -> str:
    """Where `fetch` without -o saves a file the peer named `name`: the same name, except that a leading dot
    (`.bashrc`, `.profile`: hidden files that shells and tools read) becomes `_` (F11, README "Files")."""
    return "_" + name[1:] if name.startswith(".") else name


def notice_device(paths: Any, file_id_hex: str) -> PublicIdentity | None:
    """The announcing device's identity saved with a version-2 notice, or None (version 1: the contact's)."""
    record = json.loads((notices_dir(paths) / f"{file_id_hex.lower()}.json").read_text())
    line = record.get("device")
    return PublicIdentity.from_line(line) if isinstance(line, str) else None


def load_notice(paths: Any, file_id_hex: str) -> tuple[str, FileNotice]:
    path = notices_dir(paths) / f"{file_id_hex.lower()}.json"
    well_formed = len(file_id_hex) == 32 and all(c in "0123456789abcdef" for c in file_id_hex.lower())
    if well_formed and not path.exists():
        fetched = _fetched_record(paths, file_id_hex.lower())
        if fetched is not None:
            raise NotFoundError(f"file {file_id_hex.lower()} was already fetched, to {fetched}",
                                hint="this device deleted its key after that fetch (the server keeps the "
                                     "file only until each of your devices has fetched it): ask the sender "
                                     "to send it again if that copy is gone")
        gone = notices_dir(paths) / f"{file_id_hex.lower()}.gone"
        if gone.exists():
            raise NotFoundError(f"file {file_id_hex.lower()} is not on the server (a fetch found so before: its "
                                "sender cancelled the upload, or it expired or was deleted)",
                                hint="ask the sender to send it again")
    if not well_formed or not path.exists():
        raise NotFoundError(f"no received file with id {file_id_hex[:40]!r}",
                            hint="`securecomm inbox` lists received files with their ids")
    record = json.loads(path.read_text())
    return str(record["from"]), FileNotice.decode(record["notice"].encode())


async def get_all(client: Any, notice: FileNotice, feed: Feed, progress: Progress | None = None) -> None:
    """Download the ciphertext from `feed.received` to the end, handing each chunk to `feed` (the
    thread opening the stream); while the feed is full the connection is not read (bounded memory)."""
    have = feed.received
    if have >= notice.stream_size:
        return
    # no overall deadline: a download follows an upload in progress for as long as it takes (attack
    # check: a 30 s limit on the whole request cut every fetch of a slow upload); each FILE_DATA has one
    result = client.start_request("file_get", file_id=notice.file_id.hex(), offset=have)
    result.add_done_callback(_retrieved)  # a dropped link fails it while we wait elsewhere: not "never retrieved"
    try:
        while have < notice.stream_size:
            ev: FileData = await _first(client, result, notice)
            if ev.file_id != notice.file_id or ev.offset != have:
                raise IntegrityError("the server sent file data out of order")
            if have + len(ev.data) > notice.stream_size:
                raise IntegrityError(_larger(notice))
            feed.push(ev.data)
            have += len(ev.data)
            if progress:
                progress(len(ev.data))
            if feed.full():
                await _wait_room(client, feed)
        # the RESULT, or more data than the notice announced (nothing of which is kept: the connection is
        # closed, so the server's extra bytes never pile up here)
        done = asyncio.ensure_future(_next_event(client, (FileData,)))
        done.add_done_callback(_retrieved)
        try:
            finished, _ = await asyncio.wait({done, result}, timeout=STALL_TIMEOUT,
                                             return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
        if result not in finished:
            raise IntegrityError(_larger(notice)) if done in finished and not done.cancelled() \
                else NetworkError("the server stopped answering during the file transfer")
        answer = result.result().data
        size = answer.get("size") if isinstance(answer, dict) else None
        if size != notice.stream_size:
            raise IntegrityError(_larger(notice) if isinstance(size, int) and size > notice.stream_size
                                 else "the server's answer to file_get disagrees with the file's size")
    finally:
        if not result.done():
            result.cancel()


def _larger(notice: FileNotice) -> str:
    return (f"the file on the server is larger than its notice announced ({notice.stream_size} bytes): the "
            f"sender's notice is wrong, or the server's copy; nothing was saved")


async def _wait_room(client: Any, feed: Feed) -> None:
    """Wait for the opener. FILE_DATA meanwhile wait in client.events, which past a few MiB stops the
    read loop, and the stream's own flow control then stops the socket (connection.EventQueue). The
    transport is not paused here: its resume undid the stream's own pause, and a 300 MiB fetch peaked
    at 240 MB, all of it in the stream's buffer (the new-user check)."""
    await feed.room()


async def _first(client: Any, result: asyncio.Future[Any], notice: FileNotice) -> Any:
    """The next FILE_DATA, unless the request failed (or ended early) first."""
    data = asyncio.ensure_future(_next_event(client, (FileData,)))
    data.add_done_callback(_retrieved)
    try:
        done, _ = await asyncio.wait({data, result}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the opener failed: nobody will take this one
        data.cancel()
        raise
    if data in done:
        return data.result()
    data.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        taken = await data  # it may have taken a FILE_DATA before the cancel landed
        return taken
    # The RESULT resolves as soon as it is read, maybe before we took the FILE_DATA read before it.
    while not client.events.empty():
        ev = client.events.get_nowait()
        if isinstance(ev, SecurecommError):
            raise ev
        if isinstance(ev, FileData):
            return ev
    result.result()  # raises the server's refusal
    raise IntegrityError(f"the file on the server is smaller than its notice announced ({notice.stream_size} "
                         f"bytes): the sender's notice is wrong, or the server's copy; nothing was saved")


def open_feed(feed: Feed, notice: FileNotice, me: PrivateIdentity, sender: PublicIdentity, out: Any,
              account: bytes | None = None) -> stream.Opening:
    """On a thread: open the ciphertext arriving in `feed` into `out` (an AtomicOutput, committed by the
    caller only if this returns), checking it against the notice on the way: the header signature
    before the first chunk, each chunk's tag, then the ciphertext's size and SHA-256 (hashed on a
    second thread), the plaintext's, and the final signature. `account` (this device's user key
    fingerprint, for a version-2 notice) lets a version-2 stream open with the notice's key; a
    version-1 stream opens with this device's own key, which must recover the same key."""
    # the ciphertext's SHA-256 only for a notice that names it (an early one does not: 4.4)
    h, got = (stream.BackgroundDigest() if not notice.early else None), 0

    def blocks() -> Iterator[bytes]:
        nonlocal got
        for block in feed.blocks():
            if h is not None:
                h.update(block)
            got += len(block)
            yield block

    try:
        opening = stream.open_stream(blocks(), me, sender, file_key=notice.key if account else None,
                                     account=account)
        if not same(opening.file_key, notice.key):
            raise IntegrityError("it was sealed with another key than its notice announced")
        for piece in opening:
            out.write(piece)
    except SecurecommError as e:
        if feed.stopped.is_set():  # the download gave up (its own error is the answer)
            raise
        raise IntegrityError(f"the downloaded file does not open as its sender announced: {e.message}") from e
    # An early notice (sent before sealing ended) names no digest: the stream's final signature, verified
    # above, covers the plaintext's SHA-256, and the notice's key is the stream's (a per-file secret).
    if got != notice.stream_size or not (h is None or same(h.digest(), notice.stream_sha256)):
        raise IntegrityError("the downloaded file does not match the size and SHA-256 its sender announced")
    if opening.length != notice.size or not (notice.early or same(opening.digest or b"", notice.sha256)):
        raise IntegrityError("the decrypted file does not match the size and SHA-256 its sender announced")
    return opening


async def with_retry(connect: Callable[[], Awaitable[Any]], work: Callable[[Any], Awaitable[Any]],
                     timeout: float, warn: Callable[[str], None],
                     keep: Callable[[Any, Any], None] | None = None) -> Any:
    """Run `work(client)`; after a dropped connection, reconnect and run it again (it resumes),
    for as long as `timeout` seconds allow, each attempt making progress or failing. With `keep`,
    the connection that succeeded is handed to keep(client, profile) instead of being closed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.5
    while True:
        client = None
        try:
            client, profile = await connect()
            result = await work(client)
            if keep is not None:
                keep(client, profile)
                client = None
            return result
        except NetworkError as e:
            if loop.time() + delay > deadline:
                raise
            # a refusal to try again (a stalled upload, the relay's database): its own words; else the link
            warn(f"{e.message}; trying again in {delay:g}s" if isinstance(e, StoreUnavailableError)
                 else f"connection lost ({e.message}); resuming in {delay:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()


def human_size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover - the loop always returns


def sent_copy(ev: Any, me: PrivateIdentity) -> str | None:
    """Whom a direct message went to, when it is our own copy of something we sent: from another of our
    devices (`ev.to`), or this very device's copy of a note to self. A file notice there is shown, not
    saved for `fetch`: the server does not keep the file for the device that sent it (4.4)."""
    if ev.to:
        return str(ev.to)
    return str(ev.sender) if ev.device is not None and ev.device == me.public.line else None


def describe(notice: FileNotice, sent_to: str | None = None, here: bool = False, command: str = "securecomm") -> str:
    """The line inbox and chat show for a received file (the name is escaped by the caller's printer);
    for our own copy of a file we sent (`sent_to`), where it went and from which device: nothing to
    fetch on this device."""
    head = f"[file] {notice.name} ({human_size(notice.size)})"
    if sent_to is not None:
        return f"{head}: sent to {sent_to} from {'this' if here else 'another'} device"
    return f"{head}: {command} fetch {notice.file_id.hex()}"


# -- the two commands, end to end (cli/files.py parses options and draws the bars) -------------
Bars = Callable[[int, str], Any]  # (total bytes, label) -> a context manager yielding a Progress or None


def _regular_size(src: BinaryIO) -> int | None:
    """The size of `src` if it is a regular file (so the stream's size is known before sealing)."""
    try:
        st = os.fstat(src.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size - src.tell() if stat.S_ISREG(st.st_mode) else None


async def send_file(connect: Callable[[], Awaitable[Any]], identity: PrivateIdentity, paths: Any, to: str,
                    src: BinaryIO, name: str, size_hint: int, timeout: float, warn: Callable[[str], None],
                    bars: Bars) -> tuple[bytes, Sealed]:
    """Seal and upload at once (resuming after drops). The notice goes as a direct message as soon as the
    server accepted the offer, before the upload (an early notice, without digests: the recipient may
    fetch while this uploads, docs/PROTOCOL.md 4.4 "Cut-through"). Returns (file_id, sealed). A source
    whose size is not known (a pipe) is sealed first, and its notice, with digests, follows the upload."""
    from securecomm.client.messenger import Messenger
    from securecomm.client.sending import DirectSend

    client, profile = await connect()
    try:
        messenger = Messenger(client, identity, profile.user, paths, lambda ev: None, deliveries=False)
        to_key = await recipient_account(messenger, to) if messenger.v2 else await messenger.identity_of(to)
        if messenger.v2 and messenger.devices is not None and to.lower() == profile.user \
                and len(await messenger.devices.own_devices(client)) < 2:
            # the new user's check (stop 26): stored with nobody to fetch it, it filled the quota for --file-days
            raise UsageError("a file to yourself is fetched by your other devices, and this is your only one",
                             hint="pair another device first (securecomm user login on it), or keep the file here")
    except BaseException:
        await client.close()
        raise
    first: list[Any] = [(client, profile)]  # the upload's first attempt reuses this connection

    async def connect_again() -> Any:
        return first.pop() if first else await connect()

    folder = Path(paths.data_dir) / "outgoing"
    plain_size = _regular_size(src)
    sealing: asyncio.Future[Sealed] | None = None
    if plain_size is None:
        first.clear()
        await client.close()  # not kept idle while a pipe of unknown length is sealed
        with bars(size_hint, "sealing") as bar:  # on a thread: a chat stays responsive while a file is sealed
            done = await asyncio.to_thread(seal_to_temp, src, name, identity, to_key, folder, bar)
        source: Sealed | SealedPipe = done
        sealing = asyncio.get_running_loop().create_future()
        sealing.set_result(done)
    else:
        key = os.urandom(stream.FILE_KEY_SIZE)
        pipe = source = SealedPipe(stream_size_for(plain_size, to_key), asyncio.get_running_loop())

    def start_sealing() -> asyncio.Future[Sealed]:
        fut = asyncio.ensure_future(asyncio.to_thread(seal_to_pipe, src, name, identity, to_key, pipe, key))
        fut.add_done_callback(lambda f: pipe.finish(None if f.cancelled() else f.exception()))
        return fut

    async def announce(client: Any, notice: FileNotice) -> None:
        """The notice on the upload's connection (one TLS handshake and login fewer); a resend after a
        drop uses a new one, which is closed, and the upload then resumes on its own."""
        handed = [client]

        async def this_one() -> Any:
            return (handed.pop(), profile) if handed else await connect()

        sender = DirectSend(this_one, identity, paths, to, notice.encode())
        used, _ = await sender.send(timeout, warn)
        if used is client:
            await sender.detach()  # the upload goes on here; the notice's event pump must not take its ACKs
        else:
            await sender.close(used)

    try:
        file_id: bytes | None = None
        announced = False

        async def upload(client: Any) -> None:
            nonlocal file_id, sealing, announced
            file_id, received = await offer(client, to.lower(), source, file_id)
            sealing = sealing or start_sealing()  # once the server accepted: a refusal costs no sealing
            if not announced and isinstance(source, SealedPipe) and plain_size is not None:
                # cut-through: the recipient hears of the file now and may fetch it as it arrives
                await announce(client, FileNotice(file_id, name, plain_size, b"", source.final, b"", key))
                announced = True
            total = source.final if isinstance(source, SealedPipe) else source.stream_size
            with bars(total - received, "sending") as up:
                await put_all(client, file_id, source, received, up)

        try:
            try:
                await with_retry(connect_again, upload, timeout, warn, keep=lambda c, p: first.append((c, p)))
            except (SecurecommError, asyncio.CancelledError) as e:  # a failure, or Ctrl-C / SIGTERM
                # the recipient may be fetching it: say it is gone (not for a removed device: the server
                # deleted its uploads with it, and it can no longer log in to say so)
                if announced and file_id is not None and not isinstance(e, DeviceRemovedError):
                    await cancel_upload(connect, file_id, to, warn,
                                        INTERRUPT_CANCEL_TIMEOUT if isinstance(e, asyncio.CancelledError)
                                        else CANCEL_TIMEOUT)
                raise
            assert file_id is not None and sealing is not None
            sealed = await sealing
            if not announced:  # sealed first (a pipe): the notice, with both digests, on the upload's connection
                sender = DirectSend(connect_again, identity, paths, to, sealed.notice(file_id).encode())
                client, _ = await sender.send(timeout, warn)
                await sender.close(client)
        finally:
            for unused, _ in first:
                await unused.close()
        return file_id, sealed
    finally:
        if isinstance(source, SealedPipe):
            source.stop()
            if sealing is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await sealing
        elif source.path is not None:
            source.path.unlink(missing_ok=True)


#: Seconds a failed `send --file` spends telling the server to drop the upload it had announced (an
#: interrupted one less: the person pressed Ctrl-C and waits for the prompt).
CANCEL_TIMEOUT = 10.0
INTERRUPT_CANCEL_TIMEOUT = 3.0


async def cancel_upload(connect: Callable[[], Awaitable[Any]], file_id: bytes, to: str,
                        warn: Callable[[str], None], within: float = CANCEL_TIMEOUT) -> None:
    """After an upload announced early failed: file_cancel, so that the recipient's fetch stops with
    "gone" instead of waiting for bytes that will not come. Best effort: when the server cannot be
    reached, it drops the stalled upload itself (after an hour without data)."""
    client = None
    try:
        async with asyncio.timeout(within):
            client, _ = await connect()
            await client.request("file_cancel", file_id=file_id.hex())
        warn(f"{to.lower()} was told about this file; its unfinished upload was cancelled")
    except (SecurecommError, TimeoutError):
        warn(f"{to.lower()} was told about this file; the server deletes its unfinished upload after an "
             f"hour without data")
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def recipient_account(messenger: Any, to: str) -> bytes:
    """Version 2: the user key fingerprint of `to`'s account, which a version-2 stream names as its
    recipient: our own for a file to ourselves, else `to`'s device list verified under the pinned
    user key (a first contact pins it; a changed key stops here, before anything is uploaded)."""
    from securecomm.client.devicemail import Directory

    devices = messenger.devices
    to = to.lower()
    if to == messenger.user:
        return bytes(devices.own_key.fingerprint)
    directory = Directory.parse(await messenger.client.request("device_list", user=to))
    devices.verify(to, directory)
    return bytes(directory.user_key.fingerprint)


def notice_account(paths: Any, me: PrivateIdentity, file_id_hex: str) -> bytes | None:
    """For a version-2 notice (saved with its device): this device's account fingerprint, which the
    file's stream names and with which it opens (open_feed); None for a version-1 notice."""
    return own_account(paths, me) if notice_device(paths, file_id_hex) is not None else None


def own_account(paths: Any, me: PrivateIdentity) -> bytes | None:
    """This device's account user key fingerprint (what a version-2 stream for us names), or None."""
    from securecomm.client.directv2 import device_keys_of

    keys = device_keys_of(paths, me)
    key = keys.user_key() if keys is not None else None
    return bytes(key.public.fingerprint) if key is not None else None


async def fetch_file(connect: Callable[[], Awaitable[Any]], identity: PrivateIdentity, notice: FileNotice,
                     sender: PublicIdentity, out: Path, force: bool, timeout: float, warn: Callable[[str], None],
                     bars: Bars, account: bytes | None = None) -> bytes:
    """Download while a thread checks and opens what arrived into `out` (atomically: nothing there
    unless everything verified), then file_done. A dropped connection resumes from the last byte
    received; an interrupted fetch starts over when run again. `account`: see open_feed. Returns the
    plaintext's SHA-256 that the sender's final signature covers (an early notice names none)."""
    from securecomm.files import AtomicOutput

    feed = Feed(notice.stream_size, asyncio.get_running_loop())
    with AtomicOutput(out, force=force) as target:
        opener = asyncio.ensure_future(asyncio.to_thread(open_feed, feed, notice, identity, sender, target,
                                                         account))

        async def download(client: Any) -> None:
            if not target.committed:
                with bars(notice.stream_size - feed.received, "downloading") as bar:
                    fetching = asyncio.ensure_future(get_all(client, notice, feed, bar))
                    try:
                        await asyncio.wait({fetching, opener}, return_when=asyncio.FIRST_COMPLETED)
                        if not (opener.done() and (opener.cancelled() or opener.exception() is not None)):
                            # the opener verified everything: the download still ends at the server's RESULT,
                            # which says whether the server held more than the notice announced (re-check:
                            # an opener that finished first let such a file through 1 time in 6)
                            await asyncio.wait({fetching})
                    finally:
                        if not fetching.done():  # the opener failed first: its error is the answer
                            fetching.cancel()
                            with contextlib.suppress(Exception, asyncio.CancelledError):
                                await fetching
                    if fetching.done() and not fetching.cancelled():
                        fetching.result()  # a dropped connection: with_retry resumes from feed.received
                await opener
                target.commit()
            try:
                await client.request("file_done", file_id=notice.file_id.hex())
            except SecurecommError as e:
                warn(f"the server keeps its copy until it expires: {e.message}")

        try:
            await with_retry(connect, download, timeout, warn)
        except NotFoundError as e:  # file_get's refusal: the server's words say nothing about why
            raise FileGoneError(f"file {notice.file_id.hex()} is not on the server: its sender cancelled the "
                                f"upload, or it expired or was deleted", hint="ask the sender to send it again") from e
        finally:
            feed.stop()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await opener
        return opener.result().digest or b""


def received_notice(paths: Any, sender: str, body: bytes, device: str | None = None,
                    sent_to: str | None = None) -> FileNotice | None:
    """If a direct message's body is a file notice: save it for `fetch` and return it; else None.
    `sent_to`: the copy another device of ours sent (version 2): shown, never saved (no fetch here:
    the server keeps the file for the recipient's devices, and this device keeps no key to it).
    NoticeRefused for a body that starts like a notice but does not parse, or that names a file id
    this device already holds another notice for (the first one stays: attack check, a second notice
    for a known id, from anyone, replaced its key and its sender)."""
    if not FileNotice.is_notice(body):
        return None
    try:
        notice = FileNotice.decode(body)
    except SecurecommError as e:  # shown as a line of its own, never as the raw body: that holds a key
        raise NoticeRefused(f"[file] a malformed file notice from {sender}, not shown") from e
    if sent_to is None and not save_notice(paths, sender, notice, device):
        raise NoticeRefused(f"[file] {notice.name} ({human_size(notice.size)}): ignored, file "
                            f"{notice.file_id.hex()} was already announced to this device by another notice")
    return notice


class NoticeRefused(SecurecommError):
    """A file notice that is not shown as one (see received_notice); its message is the line to show."""


def shown_body(paths: Any, ev: Any, me: PrivateIdentity,
               command: str = "securecomm") -> tuple[bytes, FileNotice | None, str | None]:
    """What inbox and chat show for a direct message: (body, the file notice or None, sent_to), the
    notice saved for `fetch` unless it is our own copy of a file we sent; `command` starts the fetch
    line (with the --home the user gave)."""
    sent_to = sent_copy(ev, me)
    try:
        notice = received_notice(paths, ev.sender, ev.body, ev.device, sent_to)
    except NoticeRefused as e:
        return e.message.encode(), None, sent_to
    if notice is None:
        return ev.body, None, sent_to
    return describe(notice, sent_to, here=not ev.to, command=command).encode(), notice, sent_to
