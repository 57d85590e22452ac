"""What a client sends to set up, pair and remove devices (docs/PROTOCOL.md 6.4, 6.7): REQUEST args, pure.

Each function takes what the device holds and what the server answered, checks
it, and returns the `args` of the next request; the connection code only
sends them. Secrets stay in DeviceKeys (0600 files); nothing here logs.
"""

from __future__ import annotations

from typing import Any

from securecomm.client.devicemail import Directory
from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.errors import FormatError, UsageError
from securecomm.store.devicekeys import DeviceKeys

#: One-time prekeys a device keeps on the server after a refill.
BATCH = K.MAX_BATCH


def _list_args(dlist: D.DeviceList, certs: list[D.DeviceCert]) -> dict[str, Any]:
    return {"device_list": dlist.encode().hex(), "certs": [c.encode().hex() for c in certs]}


def first_device(user: str, device: PrivateIdentity, name: str, keys: DeviceKeys, now_ms: int, *,
                 reset: bool = False) -> dict[str, Any]:
    """A new user key (saved), this device's certificate and list 1: `device_list_publish` args."""
    if keys.user_key() is not None and not reset:
        raise UsageError("this device already has a user key")
    key = D.UserKey.generate()
    cert = D.DeviceCert.sign(key, user, device.public, name, now_ms)
    dlist = D.DeviceList.sign(key, user, 1, now_ms, [cert.device_id])
    if reset:
        (keys.folder / "user.key").unlink(missing_ok=True)
    keys.save_user_key(key)
    keys.saw_own_list(1)
    return {**_list_args(dlist, [cert]), **({"reset": True} if reset else {})}


def refill(device: PrivateIdentity, keys: DeviceKeys, available: int, last_resort_ms: int | None,
           now_ms: int) -> dict[str, Any] | None:
    """`prekeys_upload` args when the server holds too few one-time prekeys or the last-resort
    prekey is due (6.5); None when nothing is needed."""
    one_time = keys.new_one_time(device, BATCH - available) if available < K.REFILL_BELOW else []
    due = last_resort_ms is None or now_ms - last_resort_ms >= K.LAST_RESORT_ROTATE_MS
    if not one_time and not due:
        return None
    args: dict[str, Any] = {"one_time": [p.encode().hex() for p in one_time]}
    if due:
        args["last_resort"] = keys.new_last_resort(device, now_ms).encode().hex()
    return args


def approve(user: str, me: PrivateIdentity, keys: DeviceKeys, code: str, shown: dict[str, Any],
            current: Directory, now_ms: int) -> dict[str, Any]:
    """`pair_approve` args for the device `pair_lookup` showed (the user has said yes to it)."""
    key = keys.user_key()
    if key is None:
        raise UsageError("this device has no user key, so it cannot approve another one")
    try:
        new = PublicIdentity.from_line(shown["device"])
        name = str(shown["name"])
    except (KeyError, TypeError) as e:
        raise FormatError("the server sent a malformed pairing answer") from e
    listed = D.valid_devices(user, key.public, current.device_list, current.certs)
    if len(listed) >= D.MAX_DEVICES:
        raise UsageError(f"{user} already has {D.MAX_DEVICES} devices: remove one first (securecomm devices remove)")
    cert = D.DeviceCert.sign(key, user, new, name, now_ms)
    certs = [*listed, cert]
    dlist = D.DeviceList.sign(key, user, next_counter(keys, current), now_ms, [c.device_id for c in certs])
    hand_over = K.seal_v2(D.encode_user_key_transfer(user, key), me, new, None)
    return {"code": code, "cert": cert.encode().hex(), "user_key": hand_over.hex(), **_list_args(dlist, certs)}


def complete(user: str, me: PrivateIdentity, keys: DeviceKeys,
             answer: dict[str, Any]) -> tuple[D.UserKey, D.UserKey | None]:
    """Check a `pair_complete` answer and save the user key it hands over (6.4 step 3), in place of
    an older one this device held (it was paired again after a `--reset-user-key`): (the key, the
    key it replaced or None)."""
    try:
        cert = D.DeviceCert.decode(bytes.fromhex(answer["cert"]))
        dlist = D.DeviceList.decode(bytes.fromhex(answer["device_list"]))
        approver = D.DeviceCert.decode(bytes.fromhex(answer["approver_cert"]))
        sealed = bytes.fromhex(answer["user_key"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError("the server sent a malformed pairing answer") from e
    opened = K.open_v2(sealed, me, approver.device, lambda *_: None, require_prekey=False)
    key = D.decode_user_key_transfer(opened.body, user, cert.user_key_public)
    for signed in (cert, approver):
        signed.verify(user, key.public)
    dlist.verify(user, key.public)
    if cert.device_id != me.public.fingerprint or not dlist.has(me.public.fingerprint) \
            or not dlist.has(approver.device_id):
        raise FormatError("the pairing answer does not list this device and its approver")
    replaced = keys.replace_user_key(key)
    keys.saw_own_list(dlist.counter)  # after the key: a new user key starts its counters afresh
    return key, replaced


def next_counter(keys: DeviceKeys, current: Directory) -> int:
    """The counter of the next list this device signs: above the server's current list and above any
    list of ours this device signed or saw. After the server was restored from a backup (list 8 where
    list 9 was seen), `devices remove` published a second list 9, which every contact refused as a
    different list with a counter already seen (the new-user check)."""
    return max(current.device_list.counter, keys.own_counter) + 1


def remove(user: str, keys: DeviceKeys, current: Directory, device_id: bytes, now_ms: int) -> dict[str, Any]:
    """`device_remove` args: the current list without `device_id`, signed by the user key."""
    key = keys.user_key()
    if key is None:
        raise UsageError("this device has no user key, so it cannot remove a device")
    listed = D.valid_devices(user, key.public, current.device_list, current.certs)
    kept = [c for c in listed if c.device_id != device_id]
    if len(kept) == len(listed):
        raise UsageError("no such device on your list (see: securecomm devices)")
    if not kept:
        raise UsageError("that is your only device: use user login --reset-user-key on a new one instead")
    dlist = D.DeviceList.sign(key, user, next_counter(keys, current), now_ms, [c.device_id for c in kept])
    return {"device": device_id.hex(), **_list_args(dlist, kept)}


def republish(user: str, keys: DeviceKeys, current: Directory, now_ms: int) -> dict[str, Any]:
    """`device_list_publish` args: the server's current list, the same devices, signed again above every
    list of ours this device signed or saw. The way out after a restore brought back an older list whose
    devices are all right (the re-check, stop 26: an only device could neither send nor remove anything)."""
    key = keys.user_key()
    if key is None:
        raise UsageError("this device has no user key, so it cannot sign a list")
    listed = D.valid_devices(user, key.public, current.device_list, current.certs)
    dlist = D.DeviceList.sign(key, user, next_counter(keys, current), now_ms, [c.device_id for c in listed])
    return _list_args(dlist, listed)


def find_device(current: Directory, prefix: str) -> bytes:
    """A device id from what the user typed: its short id (12 hex digits) or more."""
    text = prefix.strip().lower()
    if len(text) < 6 or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(f"{prefix!r} is not a device id: use 6 or more hex digits of it",
                         hint="use the ID column of: securecomm devices")
    matches = [c.device_id for c in current.certs if c.device_id.hex().startswith(text)]
    if len(matches) != 1:
        raise UsageError(f"{prefix!r} names {'no' if not matches else 'more than one'} device",
                         hint="use the ID column of: securecomm devices")
    return matches[0]
