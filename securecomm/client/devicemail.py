"""Direct messages to every device (docs/PROTOCOL.md 6.6, 6.7), as pure functions for the client.

Theory of operation
-------------------
    prekeys_claim(to) ──► Pins.devices (pin the user key, verify list + certs)
                      ──► one envelope v2 per device, each to that device's claimed prekey,
                          all with one msg_id; the same for the sender's own other devices
    DELIVER from U    ──► U's listed devices (verified) ──► the sender device ──► open
                          with our prekeys (the one-time key is erased) ──► body "SCM3"

The body names the conversation, so a copy on the sender's other devices
shows as "sent to NAME", and a message cannot be replayed into another
conversation; and its writer, so that a server that lists one account's
device under another account cannot show that device's messages as the
other's (a device certificate is the user key's word only: the device never
signs which account it is in). Nothing here touches the network or the terminal.
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

#: "SCM3" || len u8 || writer || len u8 || conversation || text (docs/PROTOCOL.md 6.6).
BODY_MAGIC = b"SCM3"
#: "SCM2" || len u8 || conversation || text: names no writer; read (clients before it), never written.
BODY_MAGIC_V2 = b"SCM2"


def encode_body(writer: str, conversation: str, text: bytes) -> bytes:
    w, c = D.check_user(writer), D.check_user(conversation)
    return BODY_MAGIC + bytes([len(w)]) + w + bytes([len(c)]) + c + text


def decode_body(body: bytes) -> tuple[str | None, str, bytes]:
    """(writer, or None for an SCM2 body; conversation; text)."""
    r = Reader(body, "direct message body")
    magic = r.take(len(BODY_MAGIC))
    if magic not in (BODY_MAGIC, BODY_MAGIC_V2):
        raise FormatError("not a version-2 direct message body")
    writer = _name(r) if magic == BODY_MAGIC else None
    return writer, _name(r), r.data[r.pos :]


def _name(r: Reader) -> str:
    name = r.take(r.u8()).decode("ascii", "replace")
    D.check_user(name)
    return name


def read_body(body: bytes, sender: str, my_name: str, writer_required: bool = False) -> tuple[str, bytes]:
    """The (conversation, text) of a body from `sender` (the account whose list names the sending
    device), checked: written by that account, and for us unless we wrote it. `writer_required`: the
    sending device wrote SCM3 before, so an SCM2 body from it is refused (a server relabelling an old
    message of it, or a downgrade; the re-check, stop 26)."""
    writer, conversation, text = decode_body(body)
    if writer is None and writer_required:
        raise FormatError("the sending device wrote its account's name into its messages before, and this one "
                          "has none: a server may be misattributing an old message")
    if writer is not None and writer != sender:
        raise FormatError(f"the message was written by {writer}'s device, but the server lists that device as "
                          f"{sender}'s: the server may be misattributing messages")
    if sender != my_name and conversation != my_name:
        raise FormatError("the message was written for another conversation")
    return conversation, text


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
    msg_id, body = msg_id or new_msg_id(), encode_body(my_name, to, text)
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
    conversation, text = read_body(opened.body, sender, my_name)
    mine = sender == my_name
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
