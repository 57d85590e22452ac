"""After a login that proved this device's key: make sure the device is set up (docs/PROTOCOL.md 6.4, 6.5).

The first device of an account makes the user key and publishes list 1; a
listed device tops up its one-time prekeys and replaces its last-resort
prekey when due. A device the list does not name yet is waiting to be paired:
continue_pairing shows it a code for `devices approve` on another device, and
at the next login collects the approval and the user key.
"""

from __future__ import annotations

from typing import Any

from securecomm.client import devicesetup as S
from securecomm.client.devicemail import Directory
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import FormatError, IntegrityError, NotFoundError, PairingError
from securecomm.store.devicekeys import DeviceKeys
from securecomm.timeutil import now_ms


class ListGoneError(IntegrityError):
    """the server has no device list for an account this device holds the user key of"""


async def set_up_device(client: Any, keys: DeviceKeys, me: PrivateIdentity, user: str, name: str, *,
                        reset: bool = False) -> str:
    """Returns what was done: "created", "listed", "pending", "old-key" (listed, but the list is
    signed by another user key than the one this device holds: it was paired again after a
    `--reset-user-key`, and pair_complete brings the new key) or, with `reset` (`user login
    --reset-user-key`, 6.4 end), "reset": a new user key and a list naming this device only."""
    if reset:
        await client.request("device_list_publish", **S.first_device(user, me, name, keys, now_ms(), reset=True))
        keys.clear_pairing()
        await refill_prekeys(client, keys, me)
        return "reset"
    try:
        current: Directory | None = Directory.parse(await client.request("device_list", user=user))
    except NotFoundError:
        current = None
    done = "listed"
    if current is None:
        if keys.user_key() is not None:
            # the server has no list, yet this device holds the account's user key: its operator removed
            # the account's devices (user passwd --yes), restored an older backup, or it is misbehaving.
            # A new user key is the user's decision, not the server's (attacker's check: it was made
            # silently, the old one deleted)
            raise ListGoneError(f"the server has no device list for {user}, but this device holds {user}'s user "
                                "key: the server's operator reset the account's devices or restored an older "
                                "backup, or the server is misbehaving")
        await client.request("device_list_publish", **S.first_device(user, me, name, keys, now_ms()))
        done = "created"
    elif not current.device_list.has(me.public.fingerprint):
        return "pending"
    else:
        held = keys.user_key()
        if held is not None and held.public.raw != current.user_key.raw:
            return "old-key"
        if held is not None:  # the newest list of ours seen here (the re-check: only `devices` noted it)
            keys.saw_own_list(current.device_list.counter)
    keys.clear_pairing()
    await refill_prekeys(client, keys, me)
    return done


async def refill_prekeys(client: Any, keys: DeviceKeys, me: PrivateIdentity) -> int:
    """Top up one-time prekeys and replace the last-resort one when due (6.5); erase retired
    last-resort keys past their grace period, and one-time keys handed out long ago and never
    used. Returns how many one-time prekeys were uploaded."""
    keys.prune(now_ms())
    status = await client.request("prekeys_status")
    try:
        available, last_resort_ms = int(status["available"]), status.get("last_resort_ms")
        below = status.get("handed_out_below")
        if below is not None and (isinstance(below, bool) or not isinstance(below, int)):
            raise TypeError("handed_out_below")
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError("the server sent a malformed prekeys_status answer") from e
    if below is not None:  # a server before this key says nothing of which ids it still holds
        keys.forget_handed_out(below, now_ms(), unused_key_lifetime(client))
    args = S.refill(me, keys, available, last_resort_ms, now_ms())
    if args is None:
        return 0
    for chunk in upload_chunks(args, int(getattr(client, "max_send", 0) or 1 << 20)):
        await client.request("prekeys_upload", **chunk)
    return len(args["one_time"])


def unused_key_lifetime(client: Any) -> int | None:
    """How long a one-time private key handed out and never used is kept (ms; None: by count only): 30
    days, or the server's mailbox lifetime if longer (SERVER_HELLO mailbox_ttl; 0: mail is kept for ever),
    so that mail held back on the server (a contact's key changed) can still be opened once trusted (the
    re-check: with --mailbox-ttl 90d such mail became unreadable after 30 days)."""
    hello = getattr(client, "server_hello", None)
    ttl = getattr(hello, "mailbox_ttl", None)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        return K.UNUSED_ONE_TIME_MS
    if ttl == 0:
        return None
    return max(K.UNUSED_ONE_TIME_MS, ttl * 1000)


#: Room left in a frame for the REQUEST's own JSON around the hex strings.
_FRAME_SLACK = 512


def upload_chunks(args: dict[str, Any], max_frame: int) -> list[dict[str, Any]]:
    """Split a `prekeys_upload` so that each REQUEST fits the server's frame limit, ids rising
    from chunk to chunk (the server refuses an id not above those it has); the last-resort
    prekey, the highest id, goes in the last chunk."""
    one_time: list[str] = args["one_time"]
    last = args.get("last_resort")
    size = max([len(h) for h in one_time] + [len(last or "")] + [1]) + 4
    per = max(1, (max_frame - _FRAME_SLACK) // size)
    chunks: list[dict[str, Any]] = [{"one_time": one_time[i : i + per]} for i in range(0, len(one_time), per)]
    if last is not None:
        chunks.append({"one_time": [], "last_resort": last})
    return chunks


async def continue_pairing(client: Any, keys: DeviceKeys, me: PrivateIdentity, user: str,
                           name: str, *, listed: bool = False) -> tuple[str, Any]:
    """A device without the user key (or, `listed`, with an old one), after a login: finish an
    approved pairing (6.4 step 3), else start one. Returns ("paired", (the user key, the key it
    replaced or None)) or ("code", (code, expires_ms)) to show the user."""
    try:
        answer = await client.request("pair_complete")
    except PairingError:  # not approved (yet): a fresh code replaces any earlier one of this device
        if listed:
            raise
        started = await client.request("pair_start", name=name)
        try:
            code, expires = str(started["code"]), int(started["expires_ms"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError("the server sent a malformed pair_start answer") from e
        keys.set_pairing(user, code, expires, name)
        return "code", (code, expires)
    key, old = S.complete(user, me, keys, answer)
    await set_up_device(client, keys, me, user, name)  # now listed: upload prekeys
    return "paired", (key, old)
