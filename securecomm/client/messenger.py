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

from securecomm.client import devicemail as DM
from securecomm.client.connection import Client
from securecomm.client.devicelogin import refill_prekeys
from securecomm.client.directory import Contacts, file_stamp, look_up
from securecomm.client.directv2 import (
    AFTER_ACK_DELAY,
    AHEAD_DELAY,
    DeviceDirectory,
    SealedDirect,
    device_keys_of,
    erase,
    open_with_prekey,
    serves_devices,
)
from securecomm.client.events import Alert, DeliveryReceipt, DirectMessage, Notice, printable
from securecomm.client.pins import Pins
from securecomm.client.rooms import SETTLE_MAX, SETTLE_QUIET, Rooms, RoomState
from securecomm.crypto import envelope
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import (
    ChangedKeyError,
    ExpiredError,
    IntegrityError,
    NetworkError,
    NotFoundError,
    NotListedError,
    SecurecommError,
    StaleDeviceListError,
    UnsafePermissionsError,
    VersionError,
)
from securecomm.files import PRIVATE_MODE, write_files
from securecomm.wire import protocol as P

#: Message ids remembered to drop redeliveries (a crash between showing and acknowledging).
SEEN_LIMIT = 10_000
#: Held-back DELIVERs kept to show once their sender's key is trusted (see Messenger.held_mail).
MAX_HELD_MAIL = 200
#: REJECTED lines shown in full before the rest are counted (see _rejected).
REJECTED_SHOWN = 5
#: Bad room keys are counted; a warning is shown for the first and then at every power of ten,
#: so a flood of junk frames cannot flood the screen (30 junk frames -> 2 lines, not 30).
JUNK_WARN_BASE = 10


def _milestone(n: int) -> bool:
    """10, 100, 1000...: when a counted warning is printed again."""
    while n % JUNK_WARN_BASE == 0:
        n //= JUNK_WARN_BASE
    return n == 1
#: Seconds between refills a prekeys_low NOTICE may cause (a refill tops the server up to 100 at once).
REFILL_EVERY = 30.0
#: Device-change NOTICEs shown in full per session; the rest are counted (they are the server's word).
DEVICE_NOTICES_SHOWN = 5
#: `inbox` without --follow ends this long after it started at the latest, even if a server
#: keeps sending events (or never answers): as long as any one reply may take.
DRAIN_LIMIT = 30.0

class SeenIds:
    """Ids of messages shown, one line each: `sender:msg_id`, and for a version-2 message the digest
    of its body after a space (a redelivery is acknowledged again without its one-time key, erased)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, str | None] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the file again: another session of this device (a second chat window) appends to it."""
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key:
                    self.ids[key] = value or None

    def __contains__(self, key: str) -> bool:
        return key in self.ids

    def get(self, key: str) -> str | None:
        return self.ids.get(key)

    @staticmethod
    def _line(key: str, value: str | None) -> str:
        return key if value is None else f"{key} {value}"

    def add(self, key: str, value: str | None = None) -> None:
        """Append one id (a line, fsynced); rewrite the file only when it has doubled."""
        self.ids[key] = value
        if len(self.ids) > 2 * SEEN_LIMIT:
            self.ids = dict(list(self.ids.items())[-SEEN_LIMIT:])
            text = "\n".join(self._line(k, v) for k, v in self.ids.items()) + "\n"
            write_files([(self.path, text.encode(), PRIVATE_MODE)], force=True)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_MODE)
        with os.fdopen(fd, "a") as f:
            f.write(self._line(key, value) + "\n")
            f.flush()
            os.fsync(f.fileno())



def skipped_text(to: str, device: str) -> str:
    """A listed device of `to` that got no copy (attack check: a server withholding a device's prekeys
    kept it out silently). Both names escaped: they come from the server and the peer."""
    return (f"{printable(to.encode())}'s device '{printable(device.encode())}' gets no copy: the server gave no "
            "prekey for it (a device not set up yet, or a server keeping it out)")


class Messenger(Rooms):
    def __init__(self, client: Client, me: PrivateIdentity, user: str, paths: Any,
                 emit: Callable[[Any], None], *, deliveries: bool = True, ahead: bool = False) -> None:
        self.client, self.me, self.user, self.paths = client, me, user, paths
        self.emit = emit
        #: False for a session that shows nothing (one-shot `send`): the server offers it your waiting
        #: mail too, and acknowledging unshown mail would delete it. Left unacknowledged, it stays queued.
        self.deliveries = deliveries
        self.contacts = Contacts.load(paths.contacts)
        self.seen = SeenIds(paths.seen_ids)
        #: Devices that wrote SCM3 (their writer named, 6.6): an SCM2 body from one of them is refused.
        self.writers = SeenIds(paths.writer_devices)
        self.rooms: dict[str, RoomState] = {}
        self.sent_digests: dict[bytes, tuple[str, bytes]] = {}  # msg_id -> (to, body digest)
        self.delivered: dict[bytes, asyncio.Future[DeliveryReceipt]] = {}
        self._directory: dict[str, PublicIdentity] = {}
        self.pins = Pins.load(paths.user_pins)
        keys = device_keys_of(paths, me)
        #: Version 2 (docs/PROTOCOL.md 6): this device's prekeys and the verified device lists. `ahead`
        #: (chat): the next message's prekeys are claimed as soon as a message is sent (6.13).
        self.devices = DeviceDirectory(me, user, keys, self.pins, ahead=ahead) if keys is not None else None
        self._held: int | None = None  # one-time prekeys the server holds for us, as far as we know
        self._refilled_at = -REFILL_EVERY  # when a prekeys_low NOTICE last made us refill (monotonic)
        self.busy = False
        self.last_activity = time.monotonic()
        self.skip_told: set[tuple[str, str]] = set()  # (user, device name) told as getting no copy
        self.settle_quiet, self.settle_max = SETTLE_QUIET, SETTLE_MAX
        #: How many times each kind of repeatable warning happened (see _warn_counted).
        self.warned: dict[str, int] = {}
        #: The latest sender key each held member (see RoomState.held) sent us, opened once trusted.
        self.held_keys: dict[str, P.RoomKey] = {}
        self._settling: set[asyncio.Task[None]] = set()  # room key work started by a settle timer
        #: DELIVERs held back for a changed key (unacknowledged), shown once the key is trusted: by /trust
        #: here, or by `contacts trust` in another shell, seen at the next event (the new-user check: they
        #: showed only after chat was restarted). Bounded; the server keeps them in any case.
        self.held_mail: dict[int, P.Deliver] = {}
        self._held_told: set[int] = set()
        #: Held-back messages per (sender, reason) told so far: the first in full, the rest counted.
        self._held_said: dict[str, int] = {}
        self._held_stamps = self._trust_stamps()
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
    @property
    def v2(self) -> bool:
        """Envelope version 2: the server serves devices and this device is set up (user login)."""
        return self.devices is not None and serves_devices(self.client)

    async def seal_direct(self, to: str, body: bytes) -> SealedDirect:
        """Seal `body` for `to` and remember its digest for the delivery receipt: version 2, one
        envelope per device (directv2.py); else version 1, to `to`'s pinned key."""
        to = to.lower()
        if self.v2:
            assert self.devices is not None
            try:
                sealed = await self.devices.seal(self.client, to, body)
            except NotFoundError as e:
                if "has no device list" not in e.message:
                    raise
                raise NotFoundError(f"{to} has no device that can receive messages: their account was last used "
                                    "by a version without devices, and messages are never sealed to an old "
                                    "long-term key", hint=f"{to} runs once: securecomm user login {to}") from e
        else:
            self.need_user_key()
            env = envelope.seal(body, self.me, await self.identity_of(to))
            sealed = SealedDirect(envelope.parse(env).header.msg_id, ((to, env),), sha256(body))
        for name in sealed.skipped:  # once per device and session: chat seals many
            if (to, name) not in self.skip_told:
                self.skip_told.add((to, name))
                self.emit(Alert(skipped_text(to, name)))
        self.sent_digests[sealed.msg_id] = (to, sealed.digest)
        self.delivered[sealed.msg_id] = asyncio.get_running_loop().create_future()
        return sealed

    def _speaks_version_2(self) -> bool:
        hello = getattr(self.client, "server_hello", None)
        return hello is not None and hello.version >= 2

    def need_user_key(self) -> None:
        """A home made before devices (no user key) on a version-2 session: it can neither seal (version-1
        envelopes are refused) nor be sealed to; `user login` migrates it (docs/PROTOCOL.md 6.12)."""
        if not self.v2 and self._speaks_version_2():
            raise NotFoundError("this device has no user key yet, and the server speaks protocol version 2 only "
                                "(messages sealed to long-term keys are refused)",
                                hint=f"run once: securecomm user login {self.user}")

    async def send_sealed_direct(self, to: str, sealed: SealedDirect) -> tuple[P.Receipt, bytes]:
        """As _send_sealed; a message sealed to a claim made ahead none of whose devices of the recipient
        is listed any more (they reset their user key, or removed them since) is sealed again, once, to
        the devices listed now: a changed user key then raises its warning here. The new-user check:
        the first `/msg` after the contact's reset was refused ("sealed to a device that is not on the
        recipient's list") and lost, with no word of the changed key."""
        try:
            return await self._send_sealed(to, sealed)
        except NotListedError:
            if not sealed.ahead or self.client.closed:
                raise
        return await self._send_sealed(to, await self.seal_direct(to, sealed.text))

    async def _send_sealed(self, to: str, sealed: SealedDirect) -> tuple[P.Receipt, bytes]:
        """Send (or resend, byte for byte) a sealed direct message; wait for the server's receipt of
        each copy in turn. The first copy's receipt is the answer; a later copy (another device)
        that is refused is a warning, unless the connection failed (then the caller resends all).
        A copy sealed to a claim made ahead that the server refuses as not listed went to a device
        removed since that claim: rightly refused, skipped (6.13); the recipient's first copy stored
        then answers."""
        first: P.Receipt | None = None
        removed: SecurecommError | None = None
        for mailbox, env in sealed.copies:
            if first is None and mailbox != to and removed is not None:  # none of the recipient's devices took it
                raise removed
            try:
                receipt = await self.client.send_for_receipt(P.Direct(mailbox, env), sealed.msg_id, sha256(env))
            except NotListedError as e:
                if not sealed.ahead or self.client.closed:
                    if first is None:
                        raise
                    self._warn_counted("copies not stored", f"a copy of message {sealed.msg_id.hex()[:8]} for "
                                       f"another device of {mailbox} was not stored: {e.message}", failed=False)
                    continue
                assert self.devices is not None
                self.devices.forget(mailbox)  # the next message claims again
                removed = removed or e
                continue
            except SecurecommError as e:
                if first is None or isinstance(e, NetworkError) or self.client.closed:
                    raise
                self._warn_counted("copies not stored", f"a copy of message {sealed.msg_id.hex()[:8]} for another "
                                   f"device of {mailbox} was not stored: {e.message}", failed=False)
                continue
            first = first or receipt
        if first is None:
            assert removed is not None
            raise removed
        if self.devices is not None and self.devices.ahead and sealed.claimed:
            now = asyncio.Event()
            self.devices.claim_ahead(sealed.claimed, asyncio.ensure_future(self._claim_ahead(to, sealed, now)), now)
        return first, sealed.msg_id

    async def _claim_ahead(self, to: str, sealed: SealedDirect, now: asyncio.Event) -> dict[str, DM.Directory | None]:
        """The next message's claims (chat, 6.13), once this message's delivery receipt is back (or
        AHEAD_DELAY, or the next message is being sealed); for a message sealed to a claim made ahead,
        also its check: copies to the devices listed now that it missed, and then these claims are
        spent (the next message claims again)."""
        assert self.devices is not None
        starts: list[asyncio.Future[Any]] = [asyncio.ensure_future(now.wait())]
        delivered = self.delivered.get(sealed.msg_id)
        if delivered is not None:
            starts.append(delivered)
        try:
            await asyncio.wait(starts, timeout=AHEAD_DELAY, return_when=asyncio.FIRST_COMPLETED)
        finally:
            starts[0].cancel()
        claims: dict[str, DM.Directory | None] = {}
        for user in sealed.claimed:
            claims[user] = await self.devices.claim(self.client, user)
        self.devices.check_ahead(claims)
        copies = self.devices.missed(sealed, to, claims) if sealed.ahead else []
        for copy in copies:  # a device added after the claim the message was sealed to
            try:
                await self.client.send_for_receipt(P.Direct(copy.to, copy.envelope), sealed.msg_id,
                                                   sha256(copy.envelope))
            except SecurecommError as e:
                self._warn_counted("copies not stored", f"a copy of message {sealed.msg_id.hex()[:8]} for a device "
                                   f"{copy.to} added meanwhile was not stored: {e.message}", failed=False)
        return {} if copies else claims

    async def send_direct(self, to: str, body: bytes) -> tuple[P.Receipt, bytes]:
        return await self.send_sealed_direct(to, await self.seal_direct(to, body))

    async def wait_delivered(self, msg_id: bytes, timeout: float) -> DeliveryReceipt:
        try:
            return await asyncio.wait_for(asyncio.shield(self.delivered[msg_id]), timeout)
        finally:
            self.delivered.pop(msg_id, None)

    async def _on_deliver(self, ev: P.Deliver) -> None:
        if self.v2:
            await self._on_deliver_v2(ev)
            return
        if self._speaks_version_2():  # never opened with the long-term key on a version-2 session (6.6)
            self.emit(Alert(f"REFUSED a message from {ev.sender}: {K.V1_REFUSED}; it was discarded, not shown "
                            f"(mail from before the upgrade: ask {ev.sender} to send it again; and run once: "
                            f"securecomm user login {self.user})"))
            self._reject(ev.seq)
            return
        try:
            sender = await self.identity_of(ev.sender)
        except ChangedKeyError as e:
            # Not acknowledged: it stays on the server until the user trusts the new key.
            self._hold(ev, e)
            return
        except SecurecommError as e:
            self.emit(Alert(f"message from {ev.sender} could not be checked ({e.message}); it was discarded"))
            self._reject(ev.seq)
            return
        try:
            opened = envelope.open_envelope(ev.envelope, self.me, sender)
        except SecurecommError as e:
            self._rejected(f"REJECTED a message claiming to be from {ev.sender}: {e.message}; it was "
                              "discarded, not shown")
            self._reject(ev.seq)
            return
        key = f"{ev.sender}:{opened.header.msg_id.hex()}"
        if key not in self.seen:
            self.emit(DirectMessage(ev.sender, opened.body, opened.header.msg_id, opened.header.timestamp_ms,
                                    sender.fingerprint_text))
            self.seen.add(key)
        proof = self.me.sign(P.delivered_transcript(opened.header.msg_id, opened.digest))
        self.client.send_event(P.Ack(ev.seq, P.ACK_OK, opened.digest, proof))

    async def _on_deliver_v2(self, ev: P.Deliver) -> None:
        """A version-2 DELIVER (see directv2.py for the order of checks and the key's erasure)."""
        assert self.devices is not None
        try:
            env = K.parse_v2(ev.envelope)
        except SecurecommError as e:  # version 1 too: refused by name, never opened with the long-term key
            again = f" (mail from before the upgrade: ask {ev.sender} to send it again)" \
                if isinstance(e, VersionError) else ""
            self.emit(Alert(f"REFUSED a message from {ev.sender}: {e.message}; it was discarded, not shown{again}"))
            self._reject(ev.seq)
            return
        key = f"{ev.sender}:{env.header.msg_id.hex()}"
        done = self.seen.get(key)
        if done is not None:  # shown before, the ACK lost: its one-time key is gone, so acknowledge again
            self._ack_v2(ev.seq, env.header.msg_id, bytes.fromhex(done))
            return
        try:
            listed = await self.devices.sender_devices(self.client, ev.sender, env.header.sender)
            device = DM.sender_device(env, listed)
        except (ChangedKeyError, StaleDeviceListError) as e:
            # not acknowledged: it stays on the server until the user trusts the new key, or (a list older than
            # one seen, or another with the same counter: a server restored or misbehaving) until that is
            # sorted out. The re-check: rejected, such mail was deleted, file notices and all.
            self._hold(ev, e)
            return
        except SecurecommError as e:
            self._rejected(f"REJECTED a message claiming to be from {ev.sender}: {e.message}; it was discarded")
            self._reject(ev.seq)
            return
        try:
            opened, tried = open_with_prekey(env, self.me, device, self.devices.keys)
            try:
                device_hex = env.header.sender.hex()
                conversation, text = DM.read_body(opened.body, ev.sender, self.user, device_hex in self.writers)
                if opened.body.startswith(DM.BODY_MAGIC) and device_hex not in self.writers:
                    self.writers.add(device_hex)
                mine = ev.sender == self.user
            except SecurecommError:
                erase(self.devices.keys, tried)
                raise
        except UnsafePermissionsError:
            raise  # a key file others may read (new-user check: the message was rejected and lost): stop, no ACK
        except SecurecommError as e:
            if self._shown_by_another_session(ev, key, env.header.msg_id):
                return
            self._rejected(f"REJECTED a message claiming to be from {ev.sender}: {e.message}; it was "
                           "discarded, not shown")
            self._reject(ev.seq)
            asyncio.get_running_loop().call_later(AFTER_ACK_DELAY, self.devices.keys.after_ack)  # a key was wiped
            return
        pin = self.pins.get(ev.sender)
        fingerprint = pin.user_key.fingerprint_text if pin is not None and not mine else \
            self.devices.own_key.fingerprint_text
        self.emit(DirectMessage(ev.sender, text, env.header.msg_id, env.header.timestamp_ms, fingerprint,
                                conversation if mine and conversation != self.user else None,
                                opened.without_one_time_key, device.line))
        self.seen.add(key, opened.digest.hex())  # the outcome recorded, then the key erased, then the ACK
        erase(self.devices.keys, tried)
        self._ack_v2(ev.seq, env.header.msg_id, opened.digest)
        # after the ACK, once its receipt is on its way: the wiped key's file unlinked, the next one-time
        # keys read and expanded (housekeeping: it does not compete with the message in flight)
        asyncio.get_running_loop().call_later(AFTER_ACK_DELAY, self.devices.keys.after_ack)
        if tried:
            await self._refill_when_low()

    def _shown_by_another_session(self, ev: P.Deliver, key: str, msg_id: bytes) -> bool:
        """Two sessions of one device (two chat windows) are both offered its mail; the first to open a
        message erases its one-time key, so the other cannot: exactly once per device. It was recorded as
        seen before the key was erased, so the other finds it there, says so, and acknowledges it."""
        self.seen.refresh()
        done = self.seen.get(key)
        if done is None:
            return False
        self.emit(Notice(f"a message from {ev.sender} ({msg_id.hex()[:8]}) was shown by another session "
                         "of this device"))
        self._ack_v2(ev.seq, msg_id, bytes.fromhex(done))
        return True

    def _ack_v2(self, seq: int, msg_id: bytes, digest: bytes) -> None:
        proof = self.me.sign(P.delivered_transcript_v2(msg_id, digest))
        self.client.send_event(P.Ack(seq, P.ACK_OK, digest, proof))

    async def _refill_when_low(self) -> None:
        """Upload new one-time prekeys when the server may hold fewer than REFILL_BELOW (6.5): from
        LOGIN_OK's count at the start of a session, less the ones opened since."""
        assert self.devices is not None
        if self._held is None:
            login = self.client.login
            self._held = login.prekeys if login is not None and login.prekeys is not None else 0
        self._held -= 1
        if self._held >= K.REFILL_BELOW:
            return
        await refill_prekeys(self.client, self.devices.keys, self.me)
        self._held = K.MAX_BATCH

    def _on_delivered(self, ev: P.Delivered) -> None:
        sent = self.sent_digests.get(ev.msg_id)
        if sent is None or (ev.by == self.user and sent[0] != self.user):
            # Sent by another session of ours (an earlier `send`, or this one's own ACK of a note to
            # self), or our own other device's copy: nothing here to check it against, nothing waits.
            return
        self.sent_digests.pop(ev.msg_id, None)
        verified = False
        if sent[0] == ev.by and same(sent[1], ev.digest):
            for signer, transcript in self._receipt_signers(ev):
                with contextlib.suppress(IntegrityError):
                    signer.verify(ev.signature, transcript)
                    verified = True
                    break
        receipt = DeliveryReceipt(ev.by, ev.msg_id, verified)
        fut = self.delivered.get(ev.msg_id)  # kept until wait_delivered collects it
        if fut is not None and not fut.done():
            fut.set_result(receipt)
        if not verified:
            self.emit(Alert(f"a delivery receipt from {ev.by} did not verify"))
        else:
            self.emit(receipt)

    def _on_expired(self, ev: P.Error) -> None:
        """EXPIRED (PROTOCOL.md 3.6): a direct message we sent was dropped unread; whoever waits for it stops."""
        assert ev.msg_id is not None  # the Client passes on only an EXPIRED that names a message
        sent = self.sent_digests.pop(ev.msg_id, None)
        fut = self.delivered.get(ev.msg_id)
        to = f" to {sent[0]}" if sent else ""
        error = ExpiredError(f"message {ev.msg_id.hex()}{to} expired: it waited unread longer than the server "
                             "keeps mail, and was dropped", hint="send it again when they are back")
        if fut is not None and not fut.done():
            fut.set_exception(error)
            fut.add_done_callback(lambda f: f.exception())  # told here whether or not anyone waits
        else:
            self.emit(Alert(error.message))

    def _receipt_signers(self, ev: P.Delivered) -> list[tuple[PublicIdentity, bytes]]:
        """Who may sign a receipt from `ev.by`: version 2, the device it names (else any) of those we
        sealed to."""
        if self.devices is not None and ev.by in self.devices.recipients:
            v2 = P.delivered_transcript_v2(ev.msg_id, ev.digest)
            return [(d, v2) for d in self.devices.recipients[ev.by]
                    if ev.device is None or d.fingerprint == ev.device]
        signer = self._pinned(ev.by)
        return [] if signer is None else [(signer, P.delivered_transcript(ev.msg_id, ev.digest))]

    def _pinned(self, user: str) -> PublicIdentity | None:
        """The key a delivery receipt from `user` must verify with: ours for a note to self."""
        if user == self.user:
            return self.me.public
        contact = self.contacts.get(user)
        return contact.identity if contact is not None else None

    def _reject(self, seq: int) -> None:
        """Acknowledge a refused message as rejected (the server deletes that row), unless a message with that
        number is held back here: a second DELIVER with its number is not it (the attacker's check, stop 26:
        junk injected through the relays' bus with a held message's number got the held one deleted)."""
        if seq not in self._held_told:
            self.client.send_event(P.Ack(seq, P.ACK_REJECTED))

    def _rejected(self, text: str) -> None:
        """A message refused (it failed its checks): the first REJECTED_SHOWN in full, then a count at
        10, 100, 1000...; every one still counted as failed (attacker's check: 300 junk DELIVERs were 300
        lines; NOTICEs and room events were already counted)."""
        self.warned["rejected"] = n = self.warned.get("rejected", 0) + 1
        if n <= REJECTED_SHOWN:
            self.emit(Alert(text))
            return
        if _milestone(n):
            self.emit(Alert(f"{self.warned['rejected']} messages rejected so far (the latest: {text}); counting the "
                            "rest quietly"))
        else:
            self.emit(Alert(text, quiet=True))

    def _warn_counted(self, kind: str, text: str, *, failed: bool = True) -> None:
        """A warning a peer or the server can make us repeat at will: counted per kind, shown in
        full the first time and then only as a count at 10, 100, 1000... (JUNK_WARN_BASE), so a
        flood of bad frames cannot flood the screen (30 junk frames -> 2 lines, not 30)."""
        self.warned[kind] = n = self.warned.get(kind, 0) + 1
        if n == 1:
            self.emit(Alert(text, failed))
            return
        if _milestone(n):
            self.emit(Alert(f"{self.warned[kind]} {kind} so far (the latest: {text}); counting the rest quietly",
                              failed))


    # -- the event pump -------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume unsolicited events until the connection fails (then re-raise its error)."""
        self.need_user_key()  # a home from before devices: nothing here could be opened, say what to run
        while True:
            ev = await self.client.events.get()
            if isinstance(ev, SecurecommError):
                raise ev
            self.busy = True
            try:
                await self._handle(ev)
            except SecurecommError as e:
                if self.client.closed or isinstance(e, UnsafePermissionsError):
                    raise  # unsafe key files: every message would meet them; they stay on the server
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

    def _hold(self, ev: P.Deliver, e: SecurecommError) -> None:
        if ev.seq not in self._held_told:  # told once, not again when tried again
            self._held_told.add(ev.seq)
            # in full once per sender and reason, then counted (the new-user check: the ~400-character STOP
            # text came again for every message held; README: repeated warnings are printed once, then counted)
            said = f"{ev.sender}\0{e.message}"
            n = self._held_said[said] = self._held_said.get(said, 0) + 1
            advice = f" {e.hint}" if e.hint else ""
            if n == 1:
                self.emit(Alert(f"message from {ev.sender} held back: {e.message}.{advice}", failed=False, held=True))
            else:
                self.emit(Alert(f"{n} messages from {ev.sender} held back so far, for the reason above", failed=False,
                                held=True, quiet=not _milestone(n)))
        if len(self.held_mail) < MAX_HELD_MAIL:
            self.held_mail[ev.seq] = ev
        if getattr(getattr(self.client, "server_hello", None), "held_ack", None) is True:
            # kept on the server, but this session's page may move on (PROTOCOL 4.2): else 256 held messages
            # from one contact stopped everyone else's mail (the spec-only client's check, stop 26)
            self.client.send_event(P.Ack(ev.seq, P.ACK_HELD))

    def _trust_stamps(self) -> tuple[Any, Any]:
        return file_stamp(self.paths.user_pins), file_stamp(self.paths.contacts)

    async def replay_held_mail(self) -> None:
        """Try the held-back mail again (a key was trusted): shown now, or held again without a word."""
        self._held_stamps = self._trust_stamps()
        if self.devices is not None:
            self.devices.pins.refresh()
        waiting, self.held_mail = self.held_mail, {}
        for seq in sorted(waiting):
            await self._on_deliver(waiting[seq])

    async def _handle(self, ev: P.Event) -> None:
        if self.held_mail and self._trust_stamps() != self._held_stamps:
            await self.replay_held_mail()  # `contacts trust` (or verify) ran in another shell
        if isinstance(ev, P.Deliver):
            if self.deliveries:
                await self._on_deliver(ev)
        elif isinstance(ev, P.Delivered):
            self._on_delivered(ev)
        elif isinstance(ev, P.Error):
            self._on_expired(ev)
        elif isinstance(ev, P.RoomEvent):
            await self._on_room_event(ev)
        elif isinstance(ev, P.RoomKey):
            await self._on_room_key(ev)
        elif isinstance(ev, P.RoomMessage):
            await self._on_room_message(ev)
        elif isinstance(ev, P.Notice):
            await self._on_notice(ev)

    async def _on_notice(self, ev: P.Notice) -> None:
        """NOTICE (docs/PROTOCOL.md 6.7): our account's devices changed, or our prekeys run low."""
        if self.devices is None:
            return
        if ev.event == "prekeys_low":
            # at most one refill per REFILL_EVERY: a hostile server sending 50 of these per claim had this
            # device make, fsync and keep 5,000 private keys for one message (the attacker's check)
            now = time.monotonic()
            if self.v2 and now - self._refilled_at >= REFILL_EVERY:
                self._refilled_at = now
                await refill_prekeys(self.client, self.devices.keys, self.me)
                self._held = K.MAX_BATCH
            return
        if ev.event not in ("device_added", "device_removed"):
            return  # `paired` is for a pending login (user login handles it); newer events are ignored
        self.devices.forget(self.user)
        which = f" {ev.device.hex()[:12]}" if ev.device is not None else ""
        if ev.event == "device_added":
            # loud: a device is added only with the user key, so one the user did not approve means that key
            # (one of their devices) is in someone else's hands (the new-user check: "a device X was added" was all)
            text = (f"a NEW DEVICE{which} was added to your account. If you did not approve it, remove it now "
                    f"(securecomm devices remove{which or ' ID'}) and make a new user key (securecomm user login "
                    f"{self.user} --reset-user-key): see securecomm devices")
        else:
            text = f"a device{which} was removed from your account (see: securecomm devices)"
        if self.warned.get("device notices", 0) < DEVICE_NOTICES_SHOWN:
            self.warned["device notices"] = self.warned.get("device notices", 0) + 1
            self.emit(Notice(text))
        else:  # the server's word, unsigned: past a few, counted like any repeatable warning (attacker's check)
            self._warn_counted("device notices past the first few", text, failed=False)
