"""The client's half of files through the server (docs/PROTOCOL.md 4.4): upload, download, resume.

Theory of operation
-------------------
    send --file:  seal the file (streaming envelope, crypto/stream.py) into a private temp file,
                  noting sizes and digests ──► file_offer ──► FILE_PUT … (WINDOW in flight) ──► FILE_ACK complete
                  ──► a DIRECT carrying the FileNotice (name, sizes, digests, file key)
    fetch ID:     the notice saved when `inbox` showed it ──► file_get from what the .part holds
                  ──► FILE_DATA appended ──► ciphertext digest checked ──► stream opened into a temp file
                  beside OUT ──► renamed ──► file_done (the server deletes it)

A dropped connection in either direction resumes from the last byte the other
side confirmed: the server's `received` for an upload (file_offer with the
same file_id), the length of the local .part for a download. Memory is a
window of chunks, whatever the file's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from securecomm.crypto import stream
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import IntegrityError, NetworkError, NotFoundError, SecurecommError
from securecomm.wire.files import CHUNK, FileAck, FileData, FileNotice, FilePut

#: FILE_PUT frames in flight before waiting for an acknowledgement: 16 x 256 KiB (what the server
#: queues per session) keeps a loopback or LAN link busy while bounding what is unacknowledged.
WINDOW = 16
#: Seconds to wait for each acknowledgement or data frame before calling the link dead.
STALL_TIMEOUT = 30.0
#: Reads from the plaintext while sealing (whole stream chunks).
READ_SIZE = 16 * stream.CHUNK_SIZE

Progress = Callable[[int], None]


@dataclass
class Sealed:
    """A file sealed into a temp file, ready to upload (and to upload again after a drop)."""

    path: Path
    name: str
    size: int
    sha256: bytes
    stream_size: int
    stream_sha256: bytes
    key: bytes

    def notice(self, file_id: bytes) -> FileNotice:
        return FileNotice(file_id, self.name, self.size, self.sha256, self.stream_size, self.stream_sha256,
                          self.key)


def seal_to_temp(src: BinaryIO, name: str, me: PrivateIdentity, to: PublicIdentity, folder: Path,
                 progress: Progress | None = None) -> Sealed:
    """Seal `src` to `to` into a 0600 temp file in `folder`, noting plaintext and ciphertext digests.
    The plaintext's digest is the one the stream computes for its signature (one pass, not two); the
    ciphertext's is computed on a second thread while the next run is sealed."""
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
            for piece in stream.seal(blocks(), me, to, file_key=key, summary=lambda n, d: plain.append((n, d))):
                cipher.update(piece)
                stream_size += len(piece)
                out.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Sealed(path, name, plain[0][0], plain[0][1], stream_size, cipher.digest(), key)


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


# -- upload -----------------------------------------------------------------------------------
async def offer(client: Any, to: str, sealed: Sealed, file_id: bytes | None = None) -> tuple[bytes, int]:
    args: dict[str, Any] = {"to": to, "size": sealed.stream_size, "sha256": sealed.stream_sha256.hex()}
    if file_id is not None:
        args["file_id"] = file_id.hex()
    data = await client.request("file_offer", **args)
    try:
        got, received = bytes.fromhex(data["file_id"]), int(data["received"])
    except (TypeError, KeyError, ValueError) as e:
        raise IntegrityError("the server sent a malformed answer to file_offer") from e
    if len(got) != 16 or (file_id is not None and got != file_id) or not 0 <= received <= sealed.stream_size:
        raise IntegrityError("the server sent a malformed answer to file_offer")
    return got, received


async def put_all(client: Any, file_id: bytes, sealed: Sealed, received: int,
                  progress: Progress | None = None) -> None:
    """FILE_PUT from `received` to the end, WINDOW frames in flight; returns when the server has it all."""
    with sealed.path.open("rb") as f:
        f.seek(received)
        await _raced(client, _put_loop(client, file_id, f, received, sealed.stream_size, progress), file_id)


async def _put_loop(client: Any, file_id: bytes, f: BinaryIO, offset: int, size: int,
                    progress: Progress | None) -> None:
    in_flight: deque[int] = deque()
    acked = offset
    while True:
        while offset < size and len(in_flight) < WINDOW:
            data = f.read(CHUNK)
            client.send_event(FilePut(file_id, offset, data))
            offset += len(data)
            in_flight.append(offset)
        ack: FileAck = await _next_event(client, (FileAck,))
        if ack.file_id != file_id or not in_flight or ack.received != in_flight.popleft():
            raise IntegrityError("the server acknowledged bytes that were not sent")
        if progress:
            progress(ack.received - acked)
        acked = ack.received
        if ack.complete != (acked == size):
            raise IntegrityError("the server's acknowledgement disagrees with the file's size")
        if ack.complete:
            return


# -- download ---------------------------------------------------------------------------------
def notices_dir(paths: Any) -> Path:
    return Path(paths.data_dir) / "received"  # not "files": a server with the same --home keeps ciphertext there


def save_notice(paths: Any, sender: str, notice: FileNotice, device: str | None = None) -> Path:
    """Remember a notice (inbox showed it) so that `fetch ID` knows name, digests and key. 0600.
    `device`: the identity line of the device that announced it (version 2), whose key signed the file."""
    folder = notices_dir(paths)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{notice.file_id.hex()}.json"
    record = {"from": sender, "notice": notice.encode().decode(), **({"device": device} if device else {})}
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(tmp, path)
    return path


def notice_device(paths: Any, file_id_hex: str) -> PublicIdentity | None:
    """The announcing device's identity saved with a version-2 notice, or None (version 1: the contact's)."""
    record = json.loads((notices_dir(paths) / f"{file_id_hex.lower()}.json").read_text())
    line = record.get("device")
    return PublicIdentity.from_line(line) if isinstance(line, str) else None


def load_notice(paths: Any, file_id_hex: str) -> tuple[str, FileNotice]:
    path = notices_dir(paths) / f"{file_id_hex.lower()}.json"
    if len(file_id_hex) != 32 or not all(c in "0123456789abcdef" for c in file_id_hex.lower()) \
            or not path.exists():
        raise NotFoundError(f"no received file with id {file_id_hex[:40]!r}",
                            hint="`securecomm inbox` lists received files with their ids")
    record = json.loads(path.read_text())
    return str(record["from"]), FileNotice.decode(record["notice"].encode())


async def get_all(client: Any, notice: FileNotice, part: Path, progress: Progress | None = None) -> None:
    """Download the ciphertext into `part` (0600), continuing from what it already holds."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        have = out.tell()
        if have > notice.stream_size:
            raise IntegrityError("the partial download is longer than the file")
        if have == notice.stream_size:
            return
        result = asyncio.ensure_future(client.request("file_get", file_id=notice.file_id.hex(), offset=have))
        try:
            while have < notice.stream_size:
                ev: FileData = await _first(client, result)
                if ev.file_id != notice.file_id or ev.offset != have \
                        or have + len(ev.data) > notice.stream_size:
                    raise IntegrityError("the server sent file data out of order")
                out.write(ev.data)
                have += len(ev.data)
                if progress:
                    progress(len(ev.data))
            out.flush()
            os.fsync(out.fileno())
            await result
        finally:
            if not result.done():
                result.cancel()


async def _first(client: Any, result: asyncio.Future[Any]) -> Any:
    """The next FILE_DATA, unless the request failed (or ended early) first."""
    data = asyncio.ensure_future(_next_event(client, (FileData,)))
    done, _ = await asyncio.wait({data, result}, return_when=asyncio.FIRST_COMPLETED)
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
    raise IntegrityError("the server ended the download before the file's end")


def check_and_open(part: Path, notice: FileNotice, me: PrivateIdentity, sender: PublicIdentity,
                   out: Any) -> stream.Opening:
    """Open the downloaded ciphertext into `out` (an AtomicOutput, committed by the caller only if this
    returns), checking it against the notice on the way: one read of the file, not two. The
    ciphertext is hashed on a second thread while the stream opens the next run."""
    h = stream.BackgroundDigest()
    with part.open("rb") as f:
        def blocks() -> Iterator[bytes]:
            while block := f.read(READ_SIZE):
                h.update(block)
                yield block

        try:
            opening = stream.open_stream(blocks(), me, sender)
            if not same(opening.file_key, notice.key):
                raise IntegrityError("the file was sealed with another key than its notice announced")
            for piece in opening:
                out.write(piece)
        except SecurecommError:
            for _ in blocks():  # the rest, so that a wrong copy is told apart from a bad file
                pass
            _check_copy(part, notice, h.digest())
            raise
    _check_copy(part, notice, h.digest())
    if opening.length != notice.size or not same(opening.digest or b"", notice.sha256):
        raise IntegrityError("the decrypted file does not match the size and SHA-256 its sender announced")
    return opening


def _check_copy(part: Path, notice: FileNotice, digest: bytes) -> None:
    """A download that is not the ciphertext announced is deleted (fetch then starts over)."""
    if part.stat().st_size != notice.stream_size or not same(digest, notice.stream_sha256):
        part.unlink()
        raise IntegrityError("the downloaded file does not match the size and SHA-256 its sender announced")


async def with_retry(connect: Callable[[], Awaitable[Any]], work: Callable[[Any], Awaitable[Any]],
                     timeout: float, warn: Callable[[str], None]) -> Any:
    """Run `work(client)`; after a dropped connection, reconnect and run it again (it resumes),
    for as long as `timeout` seconds allow, each attempt making progress or failing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.5
    while True:
        client = None
        try:
            client, _ = await connect()
            return await work(client)
        except NetworkError as e:
            if loop.time() + delay > deadline:
                raise
            warn(f"connection lost ({e.message}); resuming in {delay:g}s")
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


def describe(notice: FileNotice) -> str:
    """The line inbox and chat show for a received file (the name is escaped by the caller's printer)."""
    return (f"[file] {notice.name} ({human_size(notice.size)}): securecomm fetch {notice.file_id.hex()}")


# -- the two commands, end to end (cli/files.py parses options and draws the bars) -------------
Bars = Callable[[int, str], Any]  # (total bytes, label) -> a context manager yielding a Progress or None


async def send_file(connect: Callable[[], Awaitable[Any]], identity: PrivateIdentity, paths: Any, to: str,
                    src: BinaryIO, name: str, size_hint: int, timeout: float, warn: Callable[[str], None],
                    bars: Bars) -> tuple[bytes, Sealed]:
    """Seal, upload (resuming after drops), then send the notice as a direct message. (file_id, sealed)."""
    from securecomm.client.messenger import Messenger
    from securecomm.client.sending import DirectSend

    client, profile = await connect()
    try:
        to_key = await Messenger(client, identity, profile.user, paths, lambda ev: None,
                                 deliveries=False).identity_of(to)
    finally:
        await client.close()
    with bars(size_hint, "sealing") as bar:  # on a thread: a chat stays responsive while a file is sealed
        sealed = await asyncio.to_thread(seal_to_temp, src, name, identity, to_key, Path(paths.data_dir) / "outgoing",
                                         bar)
    try:
        file_id: bytes | None = None

        async def upload(client: Any) -> None:
            nonlocal file_id
            file_id, received = await offer(client, to.lower(), sealed, file_id)
            with bars(sealed.stream_size - received, "uploading") as up:
                await put_all(client, file_id, sealed, received, up)

        await with_retry(connect, upload, timeout, warn)
        assert file_id is not None
        sender = DirectSend(connect, identity, paths, to, sealed.notice(file_id).encode())
        client, _ = await sender.send(timeout, warn)
        await sender.close(client)
        return file_id, sealed
    finally:
        sealed.path.unlink(missing_ok=True)


async def fetch_file(connect: Callable[[], Awaitable[Any]], identity: PrivateIdentity, notice: FileNotice,
                     sender: PublicIdentity, out: Path, force: bool, timeout: float, warn: Callable[[str], None],
                     bars: Bars) -> None:
    """Download (resuming from the .part beside `out`), check, open into `out` atomically, then file_done."""
    from securecomm.files import AtomicOutput

    part = out.with_name(f".{out.name}.{notice.file_id.hex()}.part")

    async def download(client: Any) -> None:
        with bars(notice.stream_size, "downloading") as bar:
            await get_all(client, notice, part, bar)
        with AtomicOutput(out, force=force) as target:
            check_and_open(part, notice, identity, sender, target)
            target.commit()
        part.unlink(missing_ok=True)
        try:
            await client.request("file_done", file_id=notice.file_id.hex())
        except SecurecommError as e:
            warn(f"the server keeps its copy until it expires: {e.message}")

    await with_retry(connect, download, timeout, warn)


def received_notice(paths: Any, sender: str, body: bytes, device: str | None = None) -> FileNotice | None:
    """If a direct message's body is a file notice: save it for `fetch` and return it; else None.
    A body that starts like a notice but does not parse is shown as text by the caller."""
    if not FileNotice.is_notice(body):
        return None
    try:
        notice = FileNotice.decode(body)
    except SecurecommError:
        return None
    save_notice(paths, sender, notice, device)
    return notice
