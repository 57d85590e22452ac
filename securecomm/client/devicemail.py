"""Direct messages to every device (docs/PROTOCOL.md 6.6, 6.7), as pure functions for the client.

Theory of operation
-------------------
    prekeys_claim(to) ──► Pins.devices (pin the user key, verify list + certs)
                      ──► one envelope v2 per device, each to that device's claimed prekey,
                          all with one msg_id; the same for the sender's own other devices
    DELIVER from U    ──► U's listed devices (verified) ──► the sender device ──► open
                          with our prekeys (the one-time key is erased) ──► body "SCM2"

The body names the conversation, so a copy on the sender's other devices
shows as "sent to NAME", and a message cannot be replayed into another
conversation. Nothing here touches the network or the terminal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from securecomm.client.pins import Pins
from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.envelope import new_msg_id
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.reader import Reader
from securecomm.errors import FormatError, UnknownSenderError

BODY_MAGIC = b"SCM2"


def encode_body(conversation: str, text: bytes) -> bytes:
    raw = D.check_user(conversation)
    return BODY_MAGIC + bytes([len(raw)]) + raw + text


def decode_body(body: bytes) -> tuple[str, bytes]:
    r = Reader(body, "direct message body")
    if r.take(len(BODY_MAGIC)) != BODY_MAGIC:
        raise FormatError("not a version-2 direct message body")
    conversation = r.take(r.u8()).decode("ascii", "replace")
    D.check_user(conversation)
    return conversation, r.data[r.pos :]


@dataclass(frozen=True)
class Directory:
    """A `device_list` or `prekeys_claim` RESULT, parsed (signatures not yet checked)."""

    user: str
    user_key: D.UserPublicKey
    device_list: D.DeviceList
    certs: list[D.DeviceCert]
    prekeys: list[K.Prekey]
    #: SHA-256 of the list and certificates as received: what a verified answer is cached under
    #: (directv2.py DeviceDirectory.verify); not part of any signature.
    digest: bytes = field(default=b"", compare=False)

    @classmethod
    def parse(cls, data: Any) -> Directory:
        try:
            prekeys = [K.Prekey.decode(bytes.fromhex(p)) for p in data.get("prekeys", [])]
            dlist, certs = bytes.fromhex(data["device_list"]), [bytes.fromhex(c) for c in data["certs"]]
            digest = hashlib.sha256(b"".join(len(b).to_bytes(4, "big") + b for b in (dlist, *certs))).digest()
            return cls(str(data["user"]), D.UserPublicKey.from_line(data["user_key"]), D.DeviceList.decode(dlist),
                       [D.DeviceCert.decode(c) for c in certs], prekeys, digest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FormatError("the server sent a malformed device directory") from e


@dataclass(frozen=True)
class Outgoing:
    to: str  # whose mailbox (the recipient, or the sender for its own other devices)
    device: bytes
    envelope: bytes
    without_one_time_key: bool


Verify = Callable[[str, Directory], list[D.DeviceCert]]


def seal_direct(me: PrivateIdentity, my_name: str, to: str, text: bytes, pins: Pins,
                theirs: Directory, mine: Directory | None, *, msg_id: bytes | None = None,
                verify: Verify | None = None) -> list[Outgoing]:
    """One envelope per target device: every device of `to`, and our own other devices.

    `verify(name, directory)` returns the listed devices (default: under the pinned user key;
    the Messenger checks our own list under our own user key instead)."""
    msg_id, body = msg_id or new_msg_id(), encode_body(to, text)
    out = []
    for name, directory in ((to, theirs), (my_name, mine)):
        if directory is None:
            continue
        if directory.user != name:
            raise FormatError("the server answered for another user")
        listed = verify(name, directory) if verify is not None else \
            pins.devices(name, directory.user_key, directory.device_list, directory.certs)
        by_id = {c.device_id: c.device for c in listed}
        for cert, prekey in zip(directory.certs, directory.prekeys, strict=False):
            device = by_id.get(cert.device_id)
            if device is None or cert.device_id == me.public.fingerprint:
                continue  # not on the current list (removed), or ourselves
            out.append(Outgoing(name, cert.device_id, K.seal_v2(body, me, device, prekey, msg_id=msg_id),
                                prekey.kind != K.ONE_TIME))
    return out


@dataclass(frozen=True)
class Incoming:
    sender: str
    sender_device: bytes
    conversation: str
    text: bytes
    sent_by_me: bool
    without_one_time_key: bool
    msg_id: bytes


def sender_device(envelope: K.Envelope2, listed: list[D.DeviceCert]) -> PublicIdentity:
    """The listed device that sent this envelope; a removed device is an unknown sender."""
    for cert in listed:
        if cert.device_id == envelope.header.sender:
            return cert.device
    raise UnknownSenderError("the message is from a device that is not on its user's list (removed?)")


def open_direct(me: PrivateIdentity, my_name: str, sender: str, data: bytes, pins: Pins,
                directory: Directory, keys: Any) -> Incoming:
    """Open a DELIVER's envelope from `sender`, whose directory we fetched (or cached)."""
    env = K.parse_v2(data)
    listed = pins.devices(sender, directory.user_key, directory.device_list, directory.certs)
    device = sender_device(env, listed)
    opened = keys.open(env, me, device)
    conversation, text = decode_body(opened.body)
    mine = sender == my_name
    if not mine and conversation != my_name:
        raise FormatError("the message was written for another conversation")
    return Incoming(sender, env.header.sender, conversation if mine else sender, text, mine,
                    opened.without_one_time_key, env.header.msg_id)


def seal_sender_key(me: PrivateIdentity, room: str, sender_key_body: bytes, pins: Pins,
                    members: list[Directory]) -> list[Outgoing]:
    """A room sender key (crypto/room.py SenderKey.encode) sealed to a prekey of every device of
    every other member (ROOM_KEY, docs/PROTOCOL.md 6.6); one envelope per device."""
    del room  # the sender key names its room inside the encryption
    out = []
    for directory in members:
        listed = pins.devices(directory.user, directory.user_key, directory.device_list, directory.certs)
        by_id = {c.device_id: c.device for c in listed}
        for cert, prekey in zip(directory.certs, directory.prekeys, strict=False):
            device = by_id.get(cert.device_id)
            if device is None or cert.device_id == me.public.fingerprint:
                continue
            out.append(Outgoing(directory.user, cert.device_id, K.seal_v2(sender_key_body, me, device, prekey),
                                prekey.kind != K.ONE_TIME))
    return out
