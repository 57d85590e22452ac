"""Direct messages on envelope version 2 for a logged-in Messenger (docs/PROTOCOL.md 6.5-6.7).

Theory of operation
-------------------
Sending `send --to bob` or `/msg bob`:

    prekeys_claim(bob)  ──► his list and certificates, verified under his PINNED user key
    prekeys_claim(me)   ──► (only when our own list names other devices) our other devices
    one envelope v2 per device, all with one msg_id, body "SCM3" || writer || conversation || text,
    each to that device's one-time prekey (key_kind 1) or, when it has none left, to its
    last-resort prekey (key_kind 2); a note to self also gets a copy for this device, sealed
    to our own last-resort prekey (the server never hands a device its own prekeys)

Receiving a DELIVER:

    version 1 ──► refused by name (never opened with the long-term key), ACK rejected
    the sender's listed devices (pinned user key; our own key for our own copies)
    ──► signature ──► the private prekey ──► HPKE open ──► digest ──► body "SCM3"
    ──► shown and recorded as seen ──► the one-time private key erased ──► ACK

The one-time key is erased after the outcome is recorded and before the ACK
(6.5): a crash in between leaves the message unacknowledged and the key still
there, so it opens again and the seen-ids drop the second showing. A message
whose signature fails never reaches the key, so a forgery burns nothing.

Claiming ahead (chat, 6.13): once a message is sent, the next message's claim
starts at once, so the next line waits for no claim round trip. That claim is
also the check of the message just sent: a device it lists that the message
was not sealed to (added after the claim the message used) gets a copy, and
the claim is then dropped (its prekey for that device is spent):

    send m(n) sealed to claim(n) ──► claim(n+1) ──► devices of claim(n+1) not in m(n)?
                                                     yes: copies of m(n) to them; claim(n+1) dropped
    m(n+1) waits for that check, then is sealed to claim(n+1) (if kept and under 60 s old)

A verified list is cached per user under the digest of the list and
certificates as received (and, for a contact, only while the pin names the
same user key): the next claim with the same list skips re-verifying the
list and certificate signatures. Each prekey's signature is still checked
when it is sealed to (crypto/prekeys.py seal_v2).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from securecomm.client import devicemail as DM
from securecomm.client.devicecmds import older_than_seen
from securecomm.client.devicemail import Directory
from securecomm.client.pins import Pins
from securecomm.config import Profile
from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.envelope import new_msg_id
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import FormatError, NotFoundError, SecurecommError, StaleDeviceListError
from securecomm.store.devicekeys import DeviceKeys

if TYPE_CHECKING:
    from securecomm.client.connection import Client

#: How long our own device list is trusted before it is asked again (whether we have other devices
#: to copy a sent message to): a device added meanwhile gets copies from then on.
OWN_LIST_TTL = 60.0
#: How long a contact's verified device list is used to check their mail before it is asked again. A
#: contact who resets their user key from a device they keep sends from a device id this session
#: knows: before, the list was asked again only for an unknown device, so a long `chat` or `inbox
#: --follow` showed their mail with a tick, under the old key, for good (the new-user check).
SENDER_LIST_TTL = 10.0
#: How long a claim that found only last-resort prekeys is reused for the next messages to the same
#: user: within it a new claim would hand out the same keys. Short, because a device added meanwhile
#: is missed until the next claim (a burst of messages, not a conversation).
LAST_RESORT_REUSE = 5.0
#: A claim made ahead (after the previous message, chat) is used only this fresh; older, it is
#: dropped and the message claims again.
AHEAD_MAX_AGE = 60.0
#: The claim ahead starts once the message's delivery receipt is back, or this many seconds after
#: it was stored, or at once when the next message is being sealed: it does not compete with the
#: message still in flight.
AHEAD_DELAY = 0.25
#: The housekeeping after a message's ACK (the wiped key file unlinked, the next keys read ahead) runs
#: this many seconds later, not while the ACK's delivery receipt is on its way.
AFTER_ACK_DELAY = 0.01


@dataclass(frozen=True)
class SealedDirect:
    """One direct message, sealed: every copy (mailbox user, envelope) shares `msg_id`; the first
    copy goes to the recipient and its receipt is the send's answer."""

    msg_id: bytes
    copies: tuple[tuple[str, bytes], ...]
    digest: bytes  # SHA-256 of the body inside, what a delivery receipt signs
    without_one_time_key: bool = False
    #: Sealed to a claim made ahead: the next claim checks that no device was added meanwhile (6.13).
    ahead: bool = False
    #: What that check needs: the users claimed for, the devices sealed to, and the text.
    claimed: tuple[str, ...] = ()
    covered: frozenset[bytes] = frozenset()
    text: bytes = b""
    #: Names of the recipient's listed devices that got no copy: the server gave no prekey for them (a
    #: device not set up yet, or a server withholding one: attack check, the sender was not told).
    skipped: tuple[str, ...] = ()


def device_keys_of(paths: Any, me: PrivateIdentity) -> DeviceKeys | None:
    """This device's prekeys and user key copy, or None if it was never set up for version 2."""
    profile = Profile.load_optional(paths.profile)
    folder = paths.device_keys(profile.identity if profile is not None else "default")
    if not (folder / "user.key").exists():
        return None
    return DeviceKeys(folder, me.kem)


def serves_devices(client: Client) -> bool:
    login = getattr(client, "login", None)
    return login is not None and getattr(login, "prekeys", None) is not None


class DeviceDirectory:
    """Verified device lists: whom to seal to, whose mail to accept, whose receipts to believe."""

    def __init__(self, me: PrivateIdentity, user: str, keys: DeviceKeys, pins: Pins, *,
                 ahead: bool = False) -> None:
        self.me, self.user, self.keys, self.pins = me, user, keys, pins
        #: Claim the next message's prekeys as soon as a message is sent (chat, 6.13); one-shot
        #: `send` does not (the claim would never be used).
        self.ahead = ahead
        #: user -> (when started, the claim ahead and the check of the message before it (no entry for
        #: a user once that check sent copies: the claim is spent), an event that starts it now).
        self._ahead: dict[str, tuple[float, asyncio.Future[dict[str, Directory | None]], asyncio.Event]] = {}
        self.senders: dict[str, tuple[float, list[D.DeviceCert]]] = {}  # name -> (when asked, devices)
        self.sender_ttl = SENDER_LIST_TTL
        self.recipients: dict[str, list[PublicIdentity]] = {}
        self._own: tuple[float, list[D.DeviceCert]] | None = None
        self._last_resort_only: dict[str, tuple[float, Directory]] = {}
        #: user -> (user key, Directory.digest, verified devices): a list already verified (see top)
        self._verified: dict[str, tuple[bytes, bytes, list[D.DeviceCert]]] = {}

    @property
    def own_key(self) -> D.UserPublicKey:
        key = self.keys.user_key()
        if key is None:
            raise NotFoundError("this device has no user key", hint="run: securecomm user login NAME")
        return key.public

    def verify(self, name: str, directory: Directory) -> list[D.DeviceCert]:
        """The listed devices of `name`: under our own user key for ourselves, else the pinned one.

        The same list and certificates (by digest) under the same key are verified once: for a
        contact only while its pin still names that user key and has seen no newer list, so a
        changed key is still a key change and an older list still stale."""
        if directory.user != name:
            raise FormatError("the server answered for another user")
        if name == self.user:
            # First, and also for a list already verified: a list of ours older than one this device signed
            # or saw may name devices removed since (a restored or misbehaving server); sealing to it would
            # give them our mail, and accepting it their forgeries (the attacker's check, stop 26)
            stale = older_than_seen(self.keys, directory)
            if stale is not None:
                raise StaleDeviceListError(stale, hint="run: securecomm devices (it shows the list); remove again "
                                           "what should not be on it (securecomm devices remove ID), or if every "
                                           "device on it is yours: securecomm devices republish")
        key = self.own_key if name == self.user else directory.user_key
        cached = self._verified.get(name)
        if cached is not None and directory.digest and cached[1] == directory.digest \
                and same(cached[0], key.raw) and same(directory.user_key.raw, key.raw):
            pin = None if name == self.user else self.pins.get(name)
            if name == self.user or (pin is not None and same(pin.user_key.raw, key.raw)
                                     and pin.counter <= directory.device_list.counter):
                return list(cached[2])
        if name == self.user:
            found = D.valid_devices(name, key, directory.device_list, directory.certs)
            self.keys.saw_own_list(directory.device_list.counter)  # a list of ours seen while sending (6.3)
        else:
            found = self.pins.devices(name, directory.user_key, directory.device_list, directory.certs)
        if directory.digest:
            self._verified[name] = (key.raw, directory.digest, list(found))
        return found

    async def own_devices(self, client: Client) -> list[D.DeviceCert]:
        if self._own is None or time.monotonic() - self._own[0] > OWN_LIST_TTL:
            directory = Directory.parse(await client.request("device_list", user=self.user))
            self._own = (time.monotonic(), self.verify(self.user, directory))
        return self._own[1]

    async def sender_devices(self, client: Client, name: str, device_id: bytes) -> list[D.DeviceCert]:
        """`name`'s listed devices, asked again when `device_id` is not among those cached or the
        cached list is older than `sender_ttl` (a changed user key then raises here)."""
        cached = self.senders.get(name)
        if cached is None or time.monotonic() - cached[0] > self.sender_ttl \
                or not any(c.device_id == device_id for c in cached[1]):
            listed = self.verify(name, Directory.parse(await client.request("device_list", user=name)))
            self.senders[name] = cached = (time.monotonic(), listed)
        return cached[1]

    def forget(self, name: str | None = None) -> None:
        """A device was added or removed (NOTICE), or refused a copy: ask the server again next time.
        A claim ahead is dropped, not cancelled: it still checks the message before it."""
        if name is None or name == self.user:
            self._own = None
        self.senders.pop(name or self.user, None)
        self._last_resort_only.pop(name or self.user, None)
        self._ahead.pop(name or self.user, None)

    # -- sealing ---------------------------------------------------------------------------------
    async def claim(self, client: Client, user: str) -> Directory:
        """A prekey of each of `user`'s devices. An answer with no one-time prekey left is kept for
        LAST_RESORT_REUSE seconds: asking again would only hand out the same last-resort keys."""
        kept = self._last_resort_only.get(user)
        if kept is not None and time.monotonic() - kept[0] < LAST_RESORT_REUSE:
            return kept[1]
        directory = Directory.parse(await client.request("prekeys_claim", user=user))
        if directory.prekeys and all(p.kind == K.LAST_RESORT for p in directory.prekeys):
            self._last_resort_only[user] = (time.monotonic(), directory)
        else:
            self._last_resort_only.pop(user, None)
        return directory

    async def _claimed(self, client: Client, user: str) -> tuple[Directory, bool]:
        """(a claim for `user`, whether it was made ahead): the claim ahead once the check of the
        message before it is done, if it was kept and is fresh; else a claim now."""
        ahead = self._ahead.pop(user, None)
        if ahead is not None and time.monotonic() - ahead[0] < AHEAD_MAX_AGE:
            ahead[2].set()
            try:
                directory = (await ahead[1]).get(user)
            except SecurecommError:  # a head start that failed: claim now
                directory = None
            if directory is not None:
                try:
                    self.verify(user, directory)  # cached: sealing does not check it twice
                except StaleDeviceListError:
                    # a newer list was seen since this claim (a device added or removed, e.g. a room
                    # member's device checked meanwhile): its prekeys are out of date, claim again
                    directory = None
                else:
                    return directory, True
        return await self.claim(client, user), False

    def claim_ahead(self, users: tuple[str, ...], work: asyncio.Future[dict[str, Directory | None]],
                    now: asyncio.Event) -> None:
        """Keep `work` (the next claims for `users` and the check of the message just sent) for the
        next message to them; setting `now` starts it without waiting (AHEAD_DELAY)."""
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure only costs the head start
        for user in users:
            self._ahead[user] = (time.monotonic(), work, now)

    def stop_ahead(self) -> None:
        """The session ends: claims ahead still in flight are abandoned."""
        for _, work, _ in self._ahead.values():
            work.cancel()
        self._ahead.clear()

    def check_ahead(self, claims: dict[str, Directory | None]) -> None:
        """Verify claims made ahead as they arrive, off the next message's path: each list (cached,
        see verify) and each prekey's signature under its device (remembered by the prekey, so that
        sealing does not check it twice). A failure is left for sealing to raise."""
        for name, directory in claims.items():
            if directory is None:
                continue
            try:
                by_id = {c.device_id: c.device for c in self.verify(name, directory)}
                for cert, prekey in zip(directory.certs, directory.prekeys, strict=False):
                    device = by_id.get(cert.device_id)
                    if device is not None:
                        prekey.verify(device)
            except SecurecommError:
                continue

    def missed(self, sealed: SealedDirect, to: str, claims: dict[str, Directory | None]) -> list[DM.Outgoing]:
        """Copies of `sealed` for the devices listed in `claims` (made after it was sealed) that it was
        not sealed to: devices added since the claim it used (6.13). Their prekeys come from `claims`."""
        theirs = claims.get(to)
        if theirs is None:
            return []
        mine = claims.get(self.user) if to != self.user else None
        verified = {name: self.verify(name, d) for name, d in ((to, theirs), (self.user, mine)) if d is not None}
        listed = {c.device_id for found in verified.values() for c in found}
        if all(c.device_id in sealed.covered or c.device_id not in listed
               for d in (theirs, mine) if d is not None for c in d.certs):
            return []  # the usual case: nothing added since
        out = [o for o in DM.seal_direct(self.me, self.user, to, sealed.text, self.pins, theirs, mine,
                                         msg_id=sealed.msg_id, verify=lambda name, _d: verified[name])
               if o.device not in sealed.covered]
        known = self.recipients.setdefault(to, [])
        known += [c.device for c in verified.get(to, []) if c.device not in known]
        return out

    async def seal(self, client: Client, to: str, text: bytes) -> SealedDirect:
        if to == self.user or self._own is not None:
            theirs, ahead = await self._claimed(client, to)
        else:  # our own list is not known yet (a one-shot `send --to`): both requests in one round trip
            own = asyncio.ensure_future(self.own_devices(client))
            try:
                theirs, ahead = await self._claimed(client, to)
            finally:  # awaited even when the claim failed: its error is the one reported, never lost
                with contextlib.suppress(SecurecommError):
                    await own
        mine = None
        if to != self.user and len(await self.own_devices(client)) > 1:
            mine, mine_ahead = await self._claimed(client, self.user)
            ahead = ahead or mine_ahead
        body = DM.encode_body(self.user, to, text)
        msg_id = new_msg_id()
        verified: dict[str, list[D.DeviceCert]] = {}

        def verify(name: str, directory: Directory) -> list[D.DeviceCert]:
            verified[name] = self.verify(name, directory)
            return verified[name]

        out = DM.seal_direct(self.me, self.user, to, text, self.pins, theirs, mine, msg_id=msg_id, verify=verify)
        listed = verified[to]
        if to == self.user:  # a note to self is shown here too: sealed to our own last-resort prekey
            out.insert(0, DM.Outgoing(to, self.me.public.fingerprint,
                                      K.seal_v2(body, self.me, self.me.public, self._own_last_resort(), msg_id=msg_id),
                                      True))
        if not any(o.to == to for o in out):
            raise NotFoundError(f"{to} has no device that can receive messages yet",
                                hint=f"{to} logs in once with this version: securecomm user login {to}")
        self.recipients[to] = [c.device for c in listed] + ([self.me.public] if to == self.user else [])
        out.sort(key=lambda o: o.to != to)  # the recipient's copies first: the first receipt answers the send
        got = {o.device for o in out if o.to == to} | {self.me.public.fingerprint}
        # from the signed list: a claim leaves out a device with no prekey, certificate and all
        names = {c.device_id: c.name for c in listed}
        missing = [d for d in theirs.device_list.devices if d not in got]
        if any(d not in names for d in missing):  # its certificate is on the list, not in the claim: ask for it
            with contextlib.suppress(SecurecommError):  # (the new-user check: shown by id, README says by name)
                full = self.verify(to, Directory.parse(await client.request("device_list", user=to)))
                names.update({c.device_id: c.name for c in full})
        skipped = tuple(names.get(d, D.short_id(d)) for d in missing)
        return SealedDirect(msg_id, tuple((o.to, o.envelope) for o in out), sha256(body),
                            any(o.without_one_time_key for o in out if o.to == to), ahead,
                            (to,) + ((self.user,) if mine is not None else ()),
                            frozenset(o.device for o in out) | {self.me.public.fingerprint}, text, skipped)

    def _own_last_resort(self) -> K.Prekey:
        pid = self.keys.state.get("last_resort")
        key = self.keys.get(K.LAST_RESORT, int(pid)) if pid is not None else None
        if key is None:
            raise NotFoundError("this device has no last-resort prekey", hint="run: securecomm user login NAME")
        return key.sign(self.me)


def open_with_prekey(env: K.Envelope2, me: PrivateIdentity, device: PublicIdentity,
                     keys: DeviceKeys) -> tuple[K.Opened2, list[K.PrivatePrekey]]:
    """Open; the one-time key tried is returned, not yet erased: the caller erases it once the outcome
    is recorded (6.5). A failure after the signature verified erases it here and re-raises."""
    tried: list[K.PrivatePrekey] = []
    try:
        opened = K.open_v2(env, me, lambda _fp: device, keys.get, on_tried=tried.append)
    except BaseException:
        erase(keys, tried)
        raise
    return opened, tried


def erase(keys: DeviceKeys, tried: list[K.PrivatePrekey]) -> None:
    """Before the ACK: each key overwritten with zeros and synced (durably gone); the emptied files are
    unlinked by keys.after_ack()."""
    for key in tried:
        keys.wipe(key)
