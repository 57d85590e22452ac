"""The server's half of files through the server (docs/PROTOCOL.md 4.4): requests and FILE_PUT.

Theory of operation
-------------------
    REQUEST file_offer {to, size, sha256?, file_id?} ─► FileStore.offer ─► RESULT {file_id, received, expires}
    FILE_PUT id offset data                         ─► FileStore.put   ─► FILE_ACK id received complete
    REQUEST file_get {file_id, offset}              ─► FILE_DATA …      ─► RESULT {file_id, size, sha256?}
        (an upload still in progress: FILE_DATA of what is held, then of each chunk as it lands: cut-through)
    REQUEST file_done {file_id}                     ─► FileStore.done  ─► RESULT {deleted: bool}
    REQUEST file_cancel {file_id}  (its sender)     ─► FileStore.cancel ─► RESULT {deleted: true}

A file offered to an account with devices (docs/PROTOCOL.md 4.4, 6.3) waits
for every device listed at the offer (`devices(name)`, read on the event loop
from the relay's device store) and still listed: file_done crosses off the
session's device, and the file goes when none is left; the expiry sweep also
crosses off devices removed since.

Every FileStore call runs on one worker thread: the event loop never waits
for a disk write, an fsync or a digest, and the store sees one call at a
time. A download sends one FILE_DATA and reads the next from disk while it waits
for the client to take it (the session's back-pressure), so the server holds
about two chunks per downloading connection, whatever the file's size.
Refusals are non-fatal ERRORs (the connection stays): with `rid` for a
request, with `msg_id` = the file id for a FILE_PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from securecomm.errors import StoreUnavailableError
from securecomm.store.backends import open_file_store
from securecomm.store.files import FILE_ID_SIZE, FileRefused
from securecomm.wire import protocol as P
from securecomm.wire.files import FileAck, FileData, FilePut, chunk_size

log = logging.getLogger("securecomm.files")
T = TypeVar("T")

#: FileRefused.kind -> the wire error (docs/PROTOCOL.md 5.5 rows of the same names).
CODES = {
    "file-not-found": P.ErrorCode.NOT_FOUND,
    "file-unknown-user": P.ErrorCode.NOT_FOUND,
    "file-no-identity": P.ErrorCode.FORBIDDEN,
    "file-over-quota": P.ErrorCode.STORAGE_FULL,
    "file-put-over-quota": P.ErrorCode.STORAGE_FULL,
    "file-too-large": P.ErrorCode.TOO_LARGE,
    "file-size-mismatch": P.ErrorCode.TOO_LARGE,
    "file-out-of-order": P.ErrorCode.INTEGRITY,
    "file-digest-mismatch": P.ErrorCode.INTEGRITY,
    "file-mismatch": P.ErrorCode.INTEGRITY,
    "file-bad-args": P.ErrorCode.NOT_FOUND,
    "file-upload-stalled": P.ErrorCode.UNAVAILABLE,
}
#: FILE_PUTs one session may have queued for the disk: 16 x 256 KiB = 4 MiB held at most per uploader.
PUTS_IN_FLIGHT = 16
#: Seconds a download of an unfinished upload waits for the uploader's next chunk before it is told
#: `file-upload-stalled` (serve --file-wait; under the clients' 30 s stall timeout, so they hear why).
UPLOAD_WAIT = 20.0
#: Seconds between looks at an unfinished upload that another relay receives (no wake-up crosses relays).
POLL_UPLOAD = 0.25
#: file_gets one connection may have running at once (each holds an open file and, downloading, two
#: chunks); further ones wait for a slot.
GETS_PER_SESSION = 4
#: file_gets one connection may have asked for and not finished (running or waiting for a slot).
GETS_QUEUED = 16
#: How often expired files are swept (seconds).
EXPIRE_EVERY = 600.0


def _text(e: FileRefused) -> str:
    """What the peer is told: an opaque code's fixed text (PROTOCOL.md 5.5.1), else the refusal's own line."""
    return P.OPAQUE_TEXTS.get(CODES[e.kind], str(e))


class FileService:
    """Files for one server. `recipient(name)` folds a name and returns it if that account has a key.
    `db`: the relay's PostgreSQL URL, where the files then live too (store/pgfiles.py); else FOLDER."""

    def __init__(self, folder: Path, recipient: Callable[[str], str | None], *, quota: int, max_file: int,
                 days: float, db: str | None = None, sender_quota: int | None = None,
                 devices: Callable[[str], list[bytes] | None] | None = None) -> None:
        self.store = open_file_store(db or folder, folder, quota=quota, max_file=max_file, days=days,
                                     sender_quota=sender_quota)
        self.recipient = recipient
        #: The listed device ids of an account (None: no device list); see the module docstring.
        self.devices: Callable[[str], list[bytes] | None] = devices or (lambda name: None)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="securecomm-files")
        #: Per file being fetched while it is uploaded: set (and dropped) when a FILE_PUT to it is done.
        #: Weak: an event lives while a download waits on it (an abandoned upload leaves nothing here).
        self._growth: weakref.WeakValueDictionary[bytes, asyncio.Event] = weakref.WeakValueDictionary()
        #: Seconds a download of an unfinished upload waits for its next byte (row file-upload-stalled).
        self.upload_wait = UPLOAD_WAIT
        #: Per session: its running file_gets (weak: a session that ends takes its entry with it).
        self._gets: weakref.WeakKeyDictionary[Any, _Gets] = weakref.WeakKeyDictionary()
        #: Per-session bound on queued FILE_PUTs (weak: a session that ends takes its entry with it).
        self._slots: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()
        #: Deletions started by a device's removal (held so that they are not collected mid-way).
        self._pending: set[asyncio.Task[int]] = set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.store.close()

    async def expire_forever(self) -> None:
        while True:
            n = await self._run(self.store.expire)
            if n:
                log.info("deleted %d expired file(s)", n)
            try:
                await self.prune_fetchers()
                await self.drop_unlisted_senders(await self._run(self.store.sending_accounts))
            except Exception as e:  # a lost database: the next sweep tries again
                log.warning("could not check the devices files wait for: %s", e)
            await asyncio.sleep(EXPIRE_EVERY)

    async def prune_fetchers(self, only: list[str] | None = None) -> int:
        """Cross off devices removed since their files were offered; delete files left waiting for nobody.
        `only`: these accounts (a device of theirs was just removed), else every account files wait for."""
        waiting = only if only is not None else await self._run(self.store.waiting_recipients)
        listed = {name: self.devices(name) or [] for name in waiting}  # on the loop: the device store's thread
        n = await self._run(self.store.prune_fetchers, listed) if listed else 0
        if n:
            log.info("deleted %d file(s) whose remaining devices were removed", n)
        return n

    async def drop_unlisted_senders(self, senders: list[str]) -> int:
        """Delete the files of `senders` that a device no longer on their list uploaded: at once when a
        device is removed (server/devicerelay.py), and in the sweep for removals it missed (a reset)."""
        listed = {name: devices for name in senders if (devices := self.devices(name)) is not None}
        n = await self._run(self.store.drop_unlisted_senders, listed) if listed else 0
        if n:
            log.info("deleted %d file(s) uploaded by removed devices", n)
        return n

    def device_removed(self, user: str) -> None:
        """A device left `user`'s list: the files it uploaded go now, as its waiting mail did, and it is
        crossed off the files waiting for it (nothing waits for this; a failure is the sweep's to make good)."""
        task = asyncio.ensure_future(self._removed(user))
        self._pending.add(task)
        task.add_done_callback(self._settled)

    async def _removed(self, user: str) -> int:
        # files that device uploaded, and files that waited for it alone (the new-user check: they kept the
        # recipient's quota for up to EXPIRE_EVERY after the removal)
        return await self.drop_unlisted_senders([user]) + await self.prune_fetchers([user])

    def _settled(self, task: asyncio.Task[int]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not check the devices files wait for: %s", task.exception())

    def accounts_changed(self, accounts: set[str]) -> None:
        """Files from or for removed accounts go with them (on the worker; nothing waits for it)."""
        self.pool.submit(self._prune, accounts)

    def _prune(self, accounts: set[str]) -> None:
        n = self.store.keep_only(accounts)
        if n:
            log.info("deleted %d file(s) of removed accounts", n)

    # -- FILE_PUT ---------------------------------------------------------------------
    async def put(self, s: Any, ev: FilePut) -> None:
        """Queue the append on the worker and go back to reading: the session does not wait for the
        disk, so the next chunk arrives while this one is written. At most PUTS_IN_FLIGHT chunks per
        session are queued (a client that ignores FILE_ACK is simply not read further); the single
        worker keeps them, and so their FILE_ACKs, in order."""
        if s.identity is None:  # no offer can exist for it (file_offer needs a key): as an unknown id
            s.error(P.ErrorCode.NOT_FOUND, "no unfinished upload of yours has that id", msg_id=ev.file_id)
            return
        slots = self._slots.setdefault(s, asyncio.Semaphore(PUTS_IN_FLIGHT))
        await slots.acquire()
        fut = asyncio.get_running_loop().run_in_executor(self.pool, self.store.put, s.user.name, ev.file_id,
                                                         ev.offset, ev.data)
        fut.add_done_callback(lambda f: self._put_done(s, ev.file_id, slots, f))

    def _put_done(self, s: Any, file_id: bytes, slots: asyncio.Semaphore, fut: asyncio.Future[Any]) -> None:
        slots.release()
        grew = self._growth.pop(file_id, None)
        if grew is not None:  # downloads waiting for this upload (cut-through) look again
            grew.set()
        if fut.cancelled():
            return
        e = fut.exception()
        if isinstance(e, FileRefused):
            log.info("%s FILE_PUT refused: %s", s.label(), e.kind)
            s.error(CODES[e.kind], _text(e), msg_id=file_id)
            return
        if isinstance(e, StoreUnavailableError):  # PostgreSQL lost: retryable (row file-put-unavailable)
            log.warning("%s FILE_PUT failed: %s", s.label(), e.message)
            s.error(P.ErrorCode.UNAVAILABLE, "the relay's database is unreachable; resume shortly", msg_id=file_id)
            return
        if e is not None:  # the disk: like a message the database could not store (row store-failed)
            log.error("%s FILE_PUT failed: %s", s.label(), e)
            s.error(P.ErrorCode.INTERNAL, "the server could not store this chunk; resume later", msg_id=file_id)
            return
        received, complete = fut.result()
        if complete:
            log.info("%s uploaded a file (%d bytes)", s.label(), received)
            log.debug("%s file %s uploaded", s.label(), logged_id(file_id))
        with contextlib.suppress(P.ProtocolError):  # the connection ended meanwhile
            s.send(FileAck(file_id, received, complete))

    # -- requests ---------------------------------------------------------------------
    async def request(self, s: Any, ev: P.Request) -> bool:
        """Handle the file_* ops; False if the op is not ours."""
        handler = {"file_offer": self._offer, "file_get": self._start_get, "file_done": self._done,
                   "file_cancel": self._cancel}.get(ev.op)
        if handler is None:
            return False
        await self._answer(s, ev, handler)
        return True

    async def _answer(self, s: Any, ev: P.Request, handler: Callable[[Any, P.Request], Awaitable[None]]) -> None:
        try:
            await handler(s, ev)
        except FileRefused as e:
            log.info("%s %s refused: %s", s.label(), ev.op, e.kind)
            s.error(CODES[e.kind], _text(e), rid=ev.rid)
        except StoreUnavailableError as e:  # PostgreSQL lost (several relays): retryable, row file-unavailable
            log.warning("%s %s failed: %s", s.label(), ev.op, e.message)
            s.error(P.ErrorCode.UNAVAILABLE, "the relay's database is unreachable; retry shortly", rid=ev.rid)

    # -- file_get beside the connection's other traffic ----------------------------------
    async def _start_get(self, s: Any, ev: P.Request) -> None:
        """Run the download as a task of its own, so that the connection's other requests, messages and
        pushes go on while it streams or waits for an upload (the spec-only client's check: a waiting
        file_get held its session deaf for up to --file-wait, and a slow upload for its whole length).
        At most GETS_PER_SESSION run at once and GETS_QUEUED are asked for (more: fatal BUSY, row
        `file-gets-busy`; the read loop never waits for a slot, so it sees a hang-up whatever runs);
        file_gets of one file on one connection run one after the other, since FILE_DATA carry no rid."""
        self._need_key(s)
        file_id = _bytes(ev, "file_id", FILE_ID_SIZE)
        gets = self._gets.get(s)
        if gets is None:
            gets = self._gets[s] = _Gets()
        if len(gets.tasks) >= GETS_QUEUED:  # never block the read loop: it must see the hang-up (re-check)
            log.warning("%s closed: %d file_gets at once", s.label(), len(gets.tasks))
            s.error(P.ErrorCode.BUSY, f"too many file_get requests at once on this connection (at most "
                                      f"{GETS_QUEUED})", fatal=True, rid=ev.rid)
            return
        before = gets.last.get(file_id)
        task = asyncio.create_task(self._get_after(s, ev, gets, before))
        gets.last[file_id] = task
        gets.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            gets.tasks.discard(t)
            if gets.last.get(file_id) is t:
                del gets.last[file_id]

        task.add_done_callback(finished)

    def downloading(self, s: Any) -> bool:
        """True while a file_get of this session runs (its client sends nothing meanwhile: not idle)."""
        gets = self._gets.get(s)
        return bool(gets and gets.tasks)

    async def _get_after(self, s: Any, ev: P.Request, gets: _Gets, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.wait({before})
        try:
            async with gets.slots:
                await self._answer(s, ev, self._get)
        except P.ProtocolError:  # the connection ended while FILE_DATA were being sent
            pass
        except Exception:  # as a session's own handler would: this connection ends, the server goes on
            log.exception("%s file_get internal error", s.label())
            s.error(P.ErrorCode.INTERNAL, "internal server error", fatal=True)

    def closed(self, s: Any) -> None:
        """The connection ended: stop its downloads (one waiting for an upload would wait --file-wait)."""
        gets = self._gets.pop(s, None)
        for task in gets.tasks if gets is not None else ():
            task.cancel()

    @staticmethod
    def _need_key(s: Any) -> None:
        """Like mail (PROTOCOL.md 3.4): a password alone may not send, read or delete files."""
        if s.identity is None:
            raise FileRefused("file-no-identity", "files need a key proved in this connection "
                                                  "(run: securecomm user login)")

    async def _offer(self, s: Any, ev: P.Request) -> None:
        self._need_key(s)
        name, size, digest, file_id = offer_args(ev)
        to = self.recipient(name)
        if to is None:
            raise FileRefused("file-unknown-user", f"no user named {name[:40]!r} with a registered key")
        # every device of the recipient listed now may fetch it (not the offering device: it has the file)
        fetchers = [d for d in (self.devices(to) or []) if d != s.device] if file_id is None else []
        offer = await self._run(self.store.offer, s.user.name, to, size, digest, file_id, fetchers, s.device)
        s.send(P.Result(ev.rid, {"file_id": offer.file_id.hex(), "received": offer.received,
                                 "expires": int(offer.expires)}))

    async def _get(self, s: Any, ev: P.Request) -> None:
        self._need_key(s)
        file_id, offset = _bytes(ev, "file_id", FILE_ID_SIZE), _int(ev, "offset")
        row, f = await self._run(self.store.open_for, s.user.name, file_id, True)
        chunk = chunk_size(s.config.max_frame)
        with f:
            if offset > row.size:  # F10: seek(2**62) raised EINVAL and dropped the connection
                raise FileRefused("file-bad-args", f"'offset' {offset} is past the file's end ({row.size} bytes)")
            await self._run(f.seek, offset)
            held, complete = (row.size, True) if row.complete else (offset, False)
            ahead: asyncio.Future[bytes] | None = None
            try:
                while not s.closing and (offset < row.size or not complete):
                    if ahead is None:
                        if offset >= held:
                            # cut-through: everything held is sent; wait for the uploader's next chunk
                            held, complete = await self._more(s, file_id, held, row.size)
                            continue
                        ahead = asyncio.ensure_future(self._run(f.read, min(chunk, held - offset)))
                    data = await ahead
                    ahead = None
                    if not data:  # PostgreSQL: the rows went (fetched on another device and deleted, expired)
                        raise FileRefused("file-not-found", "the file was deleted while it was being fetched")
                    s.send(FileData(file_id, offset, data))
                    offset += len(data)
                    if offset < held:  # read the next chunk while this one drains
                        ahead = asyncio.ensure_future(self._run(f.read, min(chunk, held - offset)))
                    await s._backpressure()  # two chunks held at most: one sent, one read
            finally:
                if ahead is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await ahead  # the worker still reads from f: let it finish before f closes
        done: dict[str, Any] = {"file_id": file_id.hex(), "size": row.size}
        if row.sha256:  # only for an offer that named it
            done["sha256"] = row.sha256.hex()
        s.send(P.Result(ev.rid, done))

    async def _more(self, s: Any, file_id: bytes, held: int, size: int) -> tuple[int, bool]:
        """(held, complete) once the upload has more than `held` bytes or is complete. The uploader's
        FILE_PUT on this relay wakes the wait at once; another relay's (PostgreSQL) is seen within
        POLL_UPLOAD seconds. FileRefused if the file is gone, or if no byte came for `upload_wait`
        seconds (row `file-upload-stalled`: retryable, the download resumes from what it has)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upload_wait
        while True:
            grew = self._growth.setdefault(file_id, asyncio.Event())  # before the check: no lost wake-up
            state = await self._run(self.store.progress, file_id)
            if state is None:
                raise FileRefused("file-not-found", "the file is gone: its upload was refused, expired or "
                                                    "stalled too long, or it was deleted")
            if state[0] > held or state[1]:
                return state
            left = deadline - loop.time()
            if left <= 0 or s.closing:
                raise FileRefused("file-upload-stalled", f"the sender's upload has not advanced for "
                                  f"{self.upload_wait:g} s ({held} of {size} bytes held); ask again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(grew.wait(), min(POLL_UPLOAD, left))

    async def _cancel(self, s: Any, ev: P.Request) -> None:
        self._need_key(s)
        file_id = _bytes(ev, "file_id", FILE_ID_SIZE)
        await self._run(self.store.cancel, s.user.name, file_id)
        grew = self._growth.pop(file_id, None)
        if grew is not None:  # a download waiting for it hears at once that it is gone
            grew.set()
        log.info("%s cancelled an upload", s.label())
        log.debug("%s file %s cancelled", s.label(), logged_id(file_id))
        s.send(P.Result(ev.rid, {"file_id": file_id.hex(), "deleted": True}))

    async def _done(self, s: Any, ev: P.Request) -> None:
        self._need_key(s)
        file_id = _bytes(ev, "file_id", FILE_ID_SIZE)
        listed = self.devices(s.user.name)
        deleted = await self._run(self.store.done, s.user.name, file_id, s.device, listed)
        # no id here, not even at -v: with the uploader's debug line it said who sends files to whom (the
        # attacker's check, stop 26)
        if deleted:
            log.info("%s fetched a file: deleted", s.label())
        else:
            log.info("%s fetched a file: kept for the account's other devices", s.label())
        s.send(P.Result(ev.rid, {"file_id": file_id.hex(), "deleted": deleted}))


def logged_id(file_id: bytes) -> str:
    """A file id as debug lines show it (INFO lines name no file: joined on an id, the upload's and the
    fetch's lines said who sends files to whom, the attacker's check): its first 6 bytes, enough to follow
    one file through the log. Not the whole id: whoever holds that before the recipient's notice arrives
    can send a forged notice
    for it, which the recipient's client keeps (the first notice wins) and the real one is ignored."""
    return file_id[:6].hex() + "..."


class _Gets:
    """One session's file_gets: a slot each, and the last one asked for each file (the next waits for it)."""

    def __init__(self) -> None:
        self.slots = asyncio.Semaphore(GETS_PER_SESSION)
        self.tasks: set[asyncio.Task[None]] = set()
        self.last: dict[bytes, asyncio.Task[None]] = {}


def offer_args(ev: P.Request) -> tuple[str, int, bytes, bytes | None]:
    """file_offer's (to, size, sha256 or b"" when not given, file_id or None); FileRefused if malformed.
    sha256 is optional: a client sealing while it uploads cannot know it yet, and the recipient checks
    the ciphertext end to end, so the server only checks a digest it was given (PROTOCOL.md 4.4)."""
    digest = _bytes(ev, "sha256", 32) if "sha256" in ev.args else b""
    file_id = _bytes(ev, "file_id", FILE_ID_SIZE) if "file_id" in ev.args else None
    return _str(ev, "to"), _int(ev, "size"), digest, file_id


def _str(ev: P.Request, key: str) -> str:
    value = ev.args.get(key)
    return value if isinstance(value, str) else ""


def _int(ev: P.Request, key: str) -> int:
    value = ev.args.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise FileRefused("file-bad-args", f"{key!r} must be a whole number of bytes")
    return value


def _bytes(ev: P.Request, key: str, size: int) -> bytes:
    value = ev.args.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise FileRefused("file-bad-args", f"{key!r} must be {size} bytes in hex")
    return raw
