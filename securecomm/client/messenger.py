"""End-to-end messaging on top of a logged-in Client: contacts, direct messages, rooms.

Everything that decides whether to believe a message happens here, on the
client: identities come from the server's key directory but are pinned on
first use (contacts.json) and a changed key is refused; every direct message
is opened with envelope.open_envelope (recipient, signature, decryption,
digest); every room message with the sender's key and identity. A message
that fails is never shown as if it were good: it becomes a Alert event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from securecomm.client.connection import Client
from securecomm.client.directory import Contacts, look_up
from securecomm.client.events import Alert, DeliveryReceipt, DirectMessage
from securecomm.client.rooms import SETTLE_MAX, SETTLE_QUIET, Rooms, RoomState
from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import ChangedKeyError, IntegrityError, SecurecommError
from securecomm.files import PRIVATE_MODE, write_files
from securecomm.wire import protocol as P

#: Message ids remembered to drop redeliveries (a crash between showing and acknowledging).
SEEN_LIMIT = 10_000
#: Bad room keys are counted; a warning is shown for the first and then at every power of ten,
#: so a flood of junk frames cannot flood the screen (30 junk frames -> 2 lines, not 30).
JUNK_WARN_BASE = 10
#: `inbox` without --follow ends this long after it started at the latest, even if a server
#: keeps sending events (or never answers): as long as any one reply may take.
DRAIN_LIMIT = 30.0

class SeenIds:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, None] = {}
        if path.exists():
            self.ids = dict.fromkeys(path.read_text().split())

    def __contains__(self, key: str) -> bool:
        return key in self.ids

    def add(self, key: str) -> None:
        """Append one id (a line, fsynced); rewrite the file only when it has doubled."""
        self.ids[key] = None
        if len(self.ids) > 2 * SEEN_LIMIT:
            self.ids = dict.fromkeys(list(self.ids)[-SEEN_LIMIT:])
            write_files([(self.path, ("\n".join(self.ids) + "\n").encode(), PRIVATE_MODE)], force=True)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_MODE)
        with os.fdopen(fd, "a") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())



class Messenger(Rooms):
    def __init__(self, client: Client, me: PrivateIdentity, user: str, paths: Any,
                 emit: Callable[[Any], None], *, deliveries: bool = True) -> None:
        self.client, self.me, self.user, self.paths = client, me, user, paths
        self.emit = emit
        #: False for a session that shows nothing (one-shot `send`): the server offers it your waiting
        #: mail too, and acknowledging unshown mail would delete it. Left unacknowledged, it stays queued.
        self.deliveries = deliveries
        self.contacts = Contacts.load(paths.contacts)
        self.seen = SeenIds(paths.config_dir / "seen_ids")
        self.rooms: dict[str, RoomState] = {}
        self.sent_digests: dict[bytes, tuple[str, bytes]] = {}  # msg_id -> (to, body digest)
        self.delivered: dict[bytes, asyncio.Future[DeliveryReceipt]] = {}
        self._directory: dict[str, PublicIdentity] = {}
        self.busy = False
        self.last_activity = time.monotonic()
        self.settle_quiet, self.settle_max = SETTLE_QUIET, SETTLE_MAX
        #: How many times each kind of repeatable warning happened (see _warn_counted).
        self.warned: dict[str, int] = {}
        #: The latest sender key each held member (see RoomState.held) sent us, opened once trusted.
        self.held_keys: dict[str, P.RoomKey] = {}
        client.notice = lambda text: self._warn_counted("unsolicited server errors", text, failed=False)

    # -- identities -----------------------------------------------------------------------
    async def identity_of(self, user: str) -> PublicIdentity:
        """The user's key from the directory, pinned on first use; a change raises."""
        user = user.lower()
        if user == self.user:
            return self.me.public  # notes to self: our own key, never the directory's word for it
        if user in self._directory:
            return self._directory[user]
        identity = await look_up(self.client.request, self.contacts, user)
        self._directory[user] = identity
        return identity

    # -- direct messages ----------------------------------------------------------------------
    async def seal_direct(self, to: str, body: bytes) -> bytes:
        """Seal `body` to `to`'s pinned key and remember its digest for the delivery receipt."""
        sealed = envelope.seal(body, self.me, await self.identity_of(to))
        msg_id = envelope.parse(sealed).header.msg_id
        self.sent_digests[msg_id] = (to.lower(), sha256(body))
        self.delivered[msg_id] = asyncio.get_running_loop().create_future()
        return sealed

    async def send_sealed_direct(self, to: str, sealed: bytes) -> tuple[P.Receipt, bytes]:
        """Send (or resend, byte for byte) a sealed direct message; wait for the server's receipt."""
        msg_id = envelope.parse(sealed).header.msg_id
        receipt = await self.client.send_for_receipt(P.Direct(to.lower(), sealed), msg_id, sha256(sealed))
        return receipt, msg_id

    async def send_direct(self, to: str, body: bytes) -> tuple[P.Receipt, bytes]:
        return await self.send_sealed_direct(to, await self.seal_direct(to, body))

    async def wait_delivered(self, msg_id: bytes, timeout: float) -> DeliveryReceipt:
        try:
            return await asyncio.wait_for(asyncio.shield(self.delivered[msg_id]), timeout)
        finally:
            self.delivered.pop(msg_id, None)

    async def _on_deliver(self, ev: P.Deliver) -> None:
        try:
            sender = await self.identity_of(ev.sender)
        except ChangedKeyError as e:
            # Not acknowledged: it stays on the server until the user trusts the new key.
            self.emit(Alert(f"message from {ev.sender} held back: {e.message}. {e.hint}"))
            return
        except SecurecommError as e:
            self.emit(Alert(f"message from {ev.sender} could not be checked ({e.message}); it was discarded"))
            self.client.send_event(P.Ack(ev.seq, P.ACK_REJECTED))
            return
        try:
            opened = envelope.open_envelope(ev.envelope, self.me, sender)
        except SecurecommError as e:
            self.emit(Alert(f"REJECTED a message claiming to be from {ev.sender}: {e.message}; it was "
                              "discarded, not shown"))
            self.client.send_event(P.Ack(ev.seq, P.ACK_REJECTED))
            return
        key = f"{ev.sender}:{opened.header.msg_id.hex()}"
        if key not in self.seen:
            self.emit(DirectMessage(ev.sender, opened.body, opened.header.msg_id, opened.header.timestamp_ms,
                                    sender.fingerprint_text))
            self.seen.add(key)
        proof = self.me.sign(P.delivered_transcript(opened.header.msg_id, opened.digest))
        self.client.send_event(P.Ack(ev.seq, P.ACK_OK, opened.digest, proof))

    def _on_delivered(self, ev: P.Delivered) -> None:
        sent = self.sent_digests.pop(ev.msg_id, None)
        if sent is None:
            # Sent by another session of ours (an earlier `send`, or this one's own ACK of a note to
            # self): there is no digest here to check it against, and nothing waits for it.
            return
        verified = False
        if sent[0] == ev.by and same(sent[1], ev.digest):
            signer = self._pinned(ev.by)
            if signer is not None:
                with contextlib.suppress(IntegrityError):
                    signer.verify(ev.signature, P.delivered_transcript(ev.msg_id, ev.digest))
                    verified = True
        receipt = DeliveryReceipt(ev.by, ev.msg_id, verified)
        fut = self.delivered.get(ev.msg_id)  # kept until wait_delivered collects it
        if fut is not None and not fut.done():
            fut.set_result(receipt)
        if not verified:
            self.emit(Alert(f"a delivery receipt from {ev.by} did not verify"))
        else:
            self.emit(receipt)

    def _pinned(self, user: str) -> PublicIdentity | None:
        """The key a delivery receipt from `user` must verify with: ours for a note to self."""
        if user == self.user:
            return self.me.public
        contact = self.contacts.get(user)
        return contact.identity if contact is not None else None

    def _warn_counted(self, kind: str, text: str, *, failed: bool = True) -> None:
        """A warning a peer or the server can make us repeat at will: counted per kind, shown in
        full the first time and then only as a count at 10, 100, 1000... (JUNK_WARN_BASE), so a
        flood of bad frames cannot flood the screen (30 junk frames -> 2 lines, not 30)."""
        self.warned[kind] = n = self.warned.get(kind, 0) + 1
        if n == 1:
            self.emit(Alert(text, failed))
            return
        while n % JUNK_WARN_BASE == 0:
            n //= JUNK_WARN_BASE
        if n == 1:
            self.emit(Alert(f"{self.warned[kind]} {kind} so far (the latest: {text}); counting the rest quietly",
                              failed))


    # -- the event pump -------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume unsolicited events until the connection fails (then re-raise its error)."""
        while True:
            ev = await self.client.events.get()
            if isinstance(ev, SecurecommError):
                raise ev
            self.busy = True
            try:
                await self._handle(ev)
            except SecurecommError as e:
                if self.client.closed:
                    raise
                self.emit(Alert(str(e)))
            finally:
                self.busy = False
                self.last_activity = time.monotonic()

    async def drain(self, quiet_s: float, limit_s: float = DRAIN_LIMIT,
                    pump: asyncio.Task[None] | None = None) -> None:
        """Return once every delivery so far is handled and none came for `quiet_s`, at most
        `limit_s` after the start, or as soon as the event pump has ended (its error is the answer)."""
        deadline = time.monotonic() + limit_s
        # a round trip: the first deliveries are queued now (the pump's end interrupts it too)
        await self._unless_ended(self.client.request("who", room="lobby"), pump, deadline)
        while time.monotonic() < deadline and not (pump is not None and pump.done()):
            idle = self.client.events.empty() and not self.busy
            if idle and time.monotonic() - self.last_activity >= quiet_s:
                return
            await asyncio.sleep(0.02)

    @staticmethod
    async def _unless_ended(work: Any, pump: asyncio.Task[None] | None, deadline: float) -> None:
        task = asyncio.ensure_future(work)
        waits: set[asyncio.Future[Any]] = {task} | ({pump} if pump is not None else set())
        await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SecurecommError):
                await task
        elif pump is None or not pump.done():
            task.result()  # the request's own error, when the pump still runs
        elif not task.cancelled():
            task.exception()  # the same error as the pump's, reported from there: retrieved, not "never retrieved"

    async def _handle(self, ev: P.Event) -> None:
        if isinstance(ev, P.Deliver):
            if self.deliveries:
                await self._on_deliver(ev)
        elif isinstance(ev, P.Delivered):
            self._on_delivered(ev)
        elif isinstance(ev, P.RoomEvent):
            await self._on_room_event(ev)
        elif isinstance(ev, P.RoomKey):
            await self._on_room_key(ev)
        elif isinstance(ev, P.RoomMessage):
            self._on_room_message(ev)
