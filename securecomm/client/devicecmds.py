"""What `devices`, `devices remove` and `contacts verify` do over a key-login connection (docs/PROTOCOL.md 6.3, 6.8).

Every answer of the server is checked against a user key the client holds:
our own list against this device's copy of the user key, a contact's against
the pinned one (client/pins.py), so a server cannot add a device to what the
user is shown, nor show a number computed from a key it chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securecomm.client import devicesetup as S
from securecomm.client.devicemail import Directory
from securecomm.client.pins import Pin, Pins
from securecomm.crypto import devices as D
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.safety import safety_number
from securecomm.errors import (
    ChangedKeyError,
    FormatError,
    IntegrityError,
    PairingError,
    StaleDeviceListError,
    UsageError,
)
from securecomm.store.devicekeys import DeviceKeys
from securecomm.timeutil import now_ms


@dataclass(frozen=True)
class DeviceRow:
    name: str
    device_id: bytes
    fingerprint: str
    added_ms: int
    last_seen_ms: int | None
    this: bool

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": D.short_id(self.device_id), "device_id": self.device_id.hex(),
                "fingerprint": self.fingerprint, "added_ms": self.added_ms, "last_seen_ms": self.last_seen_ms,
                "this": self.this}


def own_user_key(keys: DeviceKeys) -> D.UserKey:
    key = keys.user_key()
    if key is None:
        raise UsageError("this device holds no user key yet (it is not set up, or waits to be paired)",
                         hint="run: securecomm user login NAME")
    return key


async def own_directory(client: Any, user: str, keys: DeviceKeys,
                        warn: Callable[[str], None] | None = None) -> tuple[Directory, dict[str, Any]]:
    """Our account's list and certificates, verified under this device's user key; and the raw answer.
    `warn` is told when the server's list is older than one this device signed or saw."""
    data = await client.request("device_list", user=user)
    current = Directory.parse(data)
    held = own_user_key(keys).public
    try:
        D.valid_devices(user, held, current.device_list, current.certs)
    except IntegrityError as e:
        if e.hint is None and held.raw != current.user_key.raw:
            # not "old": after a restore from before a reset, the server's key is the older one (the new-user
            # check, stop 26, where the hint pointed at the retired key a removed phone still held)
            e.hint = (f"this device holds user key {held.fingerprint_text}; the server's list is signed by "
                      f"{current.user_key.fingerprint_text}. Either another device reset the user key (if a device "
                      f"with that key approved this one, finish with: securecomm user login {user}), or the server "
                      "was restored from a backup made before this device's key (then, on a device you hold: "
                      f"securecomm user login {user} --reset-user-key)")
        raise
    older = older_than_seen(keys, current)
    if older is not None and warn is not None:
        warn(older)
    keys.saw_own_list(current.device_list.counter)  # only ever raises it
    return current, data


def older_than_seen(keys: DeviceKeys, current: Directory) -> str | None:
    """A warning when the server's list of our devices is older than one this device signed or saw."""
    seen = keys.own_counter
    if current.device_list.counter >= seen:
        return None
    return (f"the server holds list {current.device_list.counter} of your devices, older than list {seen} this "
            "device signed or saw: the server was restored from a backup, or is misbehaving. Devices removed "
            "since may be back on it: remove them again (the new list goes above "
            f"{seen}); if none is, securecomm devices republish signs the same devices above it")


def _last_seen(data: dict[str, Any], device_id: bytes) -> int | None:
    seen = data.get("last_seen")
    value = seen.get(device_id.hex()) if isinstance(seen, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def list_devices(client: Any, user: str, keys: DeviceKeys, me: PrivateIdentity,
                       warn: Callable[[str], None] | None = None) -> list[DeviceRow]:
    """This account's devices that verify under our user key and are on its list, oldest first."""
    current, data = await own_directory(client, user, keys, warn)
    listed = D.valid_devices(user, own_user_key(keys).public, current.device_list, current.certs)
    rows = [DeviceRow(c.name, c.device_id, c.device.fingerprint_text, c.added_ms, _last_seen(data, c.device_id),
                      c.device_id == me.public.fingerprint) for c in listed]
    return sorted(rows, key=lambda r: (r.added_ms, r.device_id))


async def device_to_remove(client: Any, user: str, keys: DeviceKeys, me: PrivateIdentity,
                           typed: str, warn: Callable[[str], None] | None = None) -> tuple[Directory, DeviceRow]:
    """The listed device `typed` names, to be shown before it is removed: (our list, its row)."""
    current, data = await own_directory(client, user, keys, warn)
    device_id = S.find_device(current, typed)
    cert = next(c for c in current.certs if c.device_id == device_id)
    return current, DeviceRow(cert.name, device_id, cert.device.fingerprint_text, cert.added_ms,
                              _last_seen(data, device_id), device_id == me.public.fingerprint)


async def remove_device(client: Any, user: str, keys: DeviceKeys, current: Directory, row: DeviceRow) -> int:
    """Sign the list without `row`'s device and send `device_remove`: the new list's counter."""
    return await _publish(client, keys, "device_remove", S.remove(user, keys, current, row.device_id, now_ms()))


async def republish_list(client: Any, user: str, keys: DeviceKeys, current: Directory) -> int:
    """Sign the server's current list again above every list of ours seen (devicesetup.republish) and
    publish it: the new list's counter."""
    return await _publish(client, keys, "device_list_publish", S.republish(user, keys, current, now_ms()))


async def _publish(client: Any, keys: DeviceKeys, op: str, args: dict[str, Any]) -> int:
    """Send a list this device signed (`op`), note its counter as the newest of ours seen, return it."""
    answer = await client.request(op, **args)
    try:
        counter = int(answer["counter"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"the server sent a malformed {op} answer") from e
    keys.saw_own_list(counter)
    return counter


@dataclass(frozen=True)
class Safety:
    name: str
    number: str
    their_key: D.UserPublicKey
    pin: Pin
    #: The pinned key, when the server now shows another one (CHANGED): `number` is then computed with
    #: the new key, so that comparing it is how the user checks the change before trusting it.
    changed_from: D.UserPublicKey | None = None


async def safety_for(client: Any, me: str, keys: DeviceKeys, pins: Pins, name: str) -> Safety:
    """The safety number with `name`, from our user key and their user key as the server shows it,
    its list verified under that key. For a pinned key that CHANGED, the number of the new key, with
    `changed_from` set (the pin is not changed here: that takes the user's yes, pins.trust)."""
    mine = own_user_key(keys).public
    theirs = Directory.parse(await client.request("device_list", user=name))
    if theirs.user != name:
        raise FormatError("the server answered with another user's device list")
    changed_from = None
    try:
        pins.devices(name, theirs.user_key, theirs.device_list, theirs.certs)
    except ChangedKeyError:
        known = pins.get(name)
        assert known is not None
        D.valid_devices(name, theirs.user_key, theirs.device_list, theirs.certs)  # signed by the new key
        changed_from = known.user_key
    pin = pins.get(name)
    assert pin is not None  # just pinned (or the same key as before, or CHANGED: pending)
    return Safety(name, safety_number(me, mine, name, theirs.user_key), theirs.user_key, pin, changed_from)


# -- pairing (6.4) ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairingRequest:
    """What `pair_lookup` says about a device waiting to be paired (its name and key come from the server:
    the user compares the fingerprint with the one the new device shows)."""

    code: str
    name: str
    device: PublicIdentity
    expires_ms: int
    answer: dict[str, Any]


async def look_up_pairing(client: Any, code: str) -> PairingRequest:
    canonical = D.normalize_code(code)  # a mistyped code fails here, before the server is asked
    try:
        answer = await client.request("pair_lookup", code=canonical)
    except PairingError as e:
        if e.hint is None and "no such pairing code" in e.message:
            e.hint = ("check the code; each `user login` on the new device replaces its code with a new one: use "
                      "the one it showed last")
        raise
    try:
        device = PublicIdentity.from_line(answer["device"])
        name = str(answer["name"])
        D.check_device_name(name)
        expires = int(answer["expires_ms"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError("the server sent a malformed pairing answer") from e
    return PairingRequest(canonical, name, device, expires, answer)


async def approve_pairing(client: Any, user: str, keys: DeviceKeys, me: PrivateIdentity,
                          request: PairingRequest) -> int:
    """Sign the new device's certificate and list (counter + 1), hand over the user key sealed to it,
    send `pair_approve`: the new list's counter."""
    def refuse(stale: str) -> None:  # signing above it would put back every device removed since (stop 26)
        raise StaleDeviceListError(stale, hint="run: securecomm devices (it shows the list); remove again what "
                                   "should not be on it, or if every device on it is yours: securecomm devices "
                                   "republish; then approve")

    current, _ = await own_directory(client, user, keys, refuse)
    args = S.approve(user, me, keys, request.code, request.answer, current, now_ms())
    answer = await client.request("pair_approve", **args)
    try:
        counter = int(answer["counter"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError("the server sent a malformed pair_approve answer") from e
    keys.saw_own_list(counter)
    return counter
