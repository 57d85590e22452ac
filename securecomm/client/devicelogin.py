"""After a login that proved this device's key: make sure the device is set up (docs/PROTOCOL.md 6.4, 6.5).

The first device of an account makes the user key and publishes list 1; a
listed device tops up its one-time prekeys and replaces its last-resort
prekey when due. A device the list does not name yet is waiting to be paired
(`devices approve` on another device; not served yet), and is left alone.
"""

from __future__ import annotations

from typing import Any

from securecomm.client import devicesetup as S
from securecomm.client.devicemail import Directory
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import NotFoundError
from securecomm.store.devicekeys import DeviceKeys
from securecomm.timeutil import now_ms


async def set_up_device(client: Any, keys: DeviceKeys, me: PrivateIdentity, user: str, name: str) -> str:
    """Returns what was done: "created", "listed" or "pending"."""
    try:
        current: Directory | None = Directory.parse(await client.request("device_list", user=user))
    except NotFoundError:
        current = None
    done = "listed"
    if current is None:
        await client.request("device_list_publish", **S.first_device(user, me, name, keys, now_ms(),
                                                                      reset=keys.user_key() is not None))
        done = "created"
    elif not current.device_list.has(me.public.fingerprint):
        return "pending"
    status = await client.request("prekeys_status")
    args = S.refill(me, keys, int(status["available"]), status.get("last_resort_ms"), now_ms())
    if args is not None:
        await client.request("prekeys_upload", **args)
    return done
