"""Room sender keys on envelope version 2 (docs/PROTOCOL.md 4.3, 6.6, 6.13), for the room half of a Messenger.

Theory of operation
-------------------
    member devices to key, per user ──► prekeys_claim(user, devices=[those in the room])
        ──► the answer verified: its list under the PINNED user key (ours under our own), each
            certificate on it ──► one ROOM_KEY per device, the sender key sealed (envelope
            version 2) to that device's claimed prekey, signed by this device

One claim per member user, all at once (they are independent requests on one connection). A claim
names only the devices in the room: a device of a member that is not in the room would get nothing
(room keys are not stored), so claiming its prekey would only burn it. A member whose claim fails
(a changed user key, no prekey, the claim limit) is reported and skipped; the others are keyed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING

from securecomm.client.devicemail import Directory
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import NotFoundError, SecurecommError
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.client.connection import Client
    from securecomm.client.directv2 import DeviceDirectory


async def hand_out(client: Client, me: PrivateIdentity, devices: DeviceDirectory, body: bytes,
                   targets: set[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """Send `body` (an encoded sender key) to each (user, device id) in `targets`; returns
    (user, why) for each user whose devices could not be keyed."""
    wanted: dict[str, set[bytes]] = defaultdict(set)
    for user, device in targets:
        if device != me.public.fingerprint:
            wanted[user].add(device)
    users = sorted(wanted)
    outcomes = await asyncio.gather(*(_to_user(client, me, devices, body, u, wanted[u]) for u in users),
                                    return_exceptions=True)
    failed = []
    for user, outcome in zip(users, outcomes, strict=True):
        if isinstance(outcome, SecurecommError):
            failed.append((user, outcome.message))
        elif isinstance(outcome, BaseException):
            raise outcome
    return failed


async def _to_user(client: Client, me: PrivateIdentity, devices: DeviceDirectory, body: bytes, user: str,
                   wanted: set[bytes]) -> None:
    answer = await client.request("prekeys_claim", user=user, devices=sorted(d.hex() for d in wanted))
    directory = Directory.parse(answer)
    listed = {c.device_id: c.device for c in devices.verify(user, directory)}
    sent = 0
    for cert, prekey in zip(directory.certs, directory.prekeys, strict=False):
        device = listed.get(cert.device_id)
        if device is None or cert.device_id not in wanted:
            continue  # not on the verified list (removed), or not in the room
        client.send_event(P.RoomKey(user, K.seal_v2(body, me, device, prekey)))
        sent += 1
    if sent < len(wanted):
        raise NotFoundError(f"{len(wanted) - sent} of their devices in the room had no prekey or are not on their list")

