"""Direct messages on envelope version 2 for a logged-in Messenger (docs/PROTOCOL.md 6.5-6.7).

Theory of operation
-------------------
Sending `send --to bob` or `/msg bob`:

    prekeys_claim(bob)  ──► his list and certificates, verified under his PINNED user key
    prekeys_claim(me)   ──► (only when our own list names other devices) our other devices
    one envelope v2 per device, all with one msg_id, body "SCM2" || conversation || text,
    each to that device's one-time prekey (key_kind 1) or, when it has none left, to its
    last-resort prekey (key_kind 2); a note to self also gets a copy for this device, sealed
    to our own last-resort prekey (the server never hands a device its own prekeys)

Receiving a DELIVER:

    version 1 ──► refused by name (never opened with the long-term key), ACK rejected
    the sender's listed devices (pinned user key; our own key for our own copies)
    ──► signature ──► the private prekey ──► HPKE open ──► digest ──► body "SCM2"
    ──► shown and recorded as seen ──► the one-time private key erased ──► ACK

The one-time key is erased after the outcome is recorded and before the ACK
(6.5): a crash in between leaves the message unacknowledged and the key still
there, so it opens again and the seen-ids drop the second showing. A message
whose signature fails never reaches the key, so a forgery burns nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from securecomm.client import devicemail as DM
from securecomm.client.devicemail import Directory
from securecomm.client.pins import Pins
from securecomm.config import Profile
from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.envelope import new_msg_id
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import FormatError, NotFoundError
from securecomm.store.devicekeys import DeviceKeys

if TYPE_CHECKING:
    from securecomm.client.connection import Client

#: How long our own device list is trusted before it is asked again (whether we have other devices
#: to copy a sent message to): a device added meanwhile gets copies from then on.
OWN_LIST_TTL = 60.0
#: How long a claim that found only last-resort prekeys is reused for the next messages to the same
#: user: within it a new claim would hand out the same keys. Short, because a device added meanwhile
#: is missed until the next claim (a burst of messages, not a conversation).
LAST_RESORT_REUSE = 5.0


@dataclass(frozen=True)
class SealedDirect:
    """One direct message, sealed: every copy (mailbox user, envelope) shares `msg_id`; the first
    copy goes to the recipient and its receipt is the send's answer."""

    msg_id: bytes
    copies: tuple[tuple[str, bytes], ...]
    digest: bytes  # SHA-256 of the body inside, what a delivery receipt signs
    without_one_time_key: bool = False


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

    def __init__(self, me: PrivateIdentity, user: str, keys: DeviceKeys, pins: Pins) -> None:
        self.me, self.user, self.keys, self.pins = me, user, keys, pins
        self.senders: dict[str, list[D.DeviceCert]] = {}
        self.recipients: dict[str, list[PublicIdentity]] = {}
        self._own: tuple[float, list[D.DeviceCert]] | None = None
        self._last_resort_only: dict[str, tuple[float, Directory]] = {}

    @property
    def own_key(self) -> D.UserPublicKey:
        key = self.keys.user_key()
        if key is None:
            raise NotFoundError("this device has no user key", hint="run: securecomm user login NAME")
        return key.public

    def verify(self, name: str, directory: Directory) -> list[D.DeviceCert]:
        """The listed devices of `name`: under our own user key for ourselves, else the pinned one."""
        if directory.user != name:
            raise FormatError("the server answered for another user")
        if name == self.user:
            return D.valid_devices(name, self.own_key, directory.device_list, directory.certs)
        return self.pins.devices(name, directory.user_key, directory.device_list, directory.certs)

    async def own_devices(self, client: Client) -> list[D.DeviceCert]:
        if self._own is None or time.monotonic() - self._own[0] > OWN_LIST_TTL:
            directory = Directory.parse(await client.request("device_list", user=self.user))
            self._own = (time.monotonic(), self.verify(self.user, directory))
        return self._own[1]

    async def sender_devices(self, client: Client, name: str, device_id: bytes) -> list[D.DeviceCert]:
        """`name`'s listed devices, asked again once when `device_id` is not among those cached."""
        listed = self.senders.get(name)
        if listed is None or not any(c.device_id == device_id for c in listed):
            listed = self.verify(name, Directory.parse(await client.request("device_list", user=name)))
            self.senders[name] = listed
        return listed

    def forget(self, name: str | None = None) -> None:
        """A device was added or removed (NOTICE): ask the server again next time."""
        if name is None or name == self.user:
            self._own = None
        self.senders.pop(name or self.user, None)
        self._last_resort_only.pop(name or self.user, None)

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

    async def seal(self, client: Client, to: str, text: bytes) -> SealedDirect:
        theirs = await self.claim(client, to)
        mine = None
        if to != self.user and len(await self.own_devices(client)) > 1:
            mine = await self.claim(client, self.user)
        body = DM.encode_body(to, text)
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
        return SealedDirect(msg_id, tuple((o.to, o.envelope) for o in out), sha256(body),
                            any(o.without_one_time_key for o in out if o.to == to))

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
    for key in tried:
        keys.delete(key)
