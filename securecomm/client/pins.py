"""Pinned user keys (protocol version 2): contacts pin a person's user key, not a device.

A JSON file maps a user name to the user key first seen for it, the newest
device-list counter accepted under that key (so a server cannot replay an
older list that still names a removed device), whether the user compared
safety numbers (`verified`), and a changed key waiting for `contacts trust`.
Adding or removing a device never changes the pin; a new user key does, and
for a verified contact that is a louder, separate error.

Migration from version 1 (docs/PROTOCOL.md 6.12): a contact whose device
identity was pinned by the old contacts file accepts a first user key without
a warning when that key's device list certifies the pinned identity.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from securecomm.client.answers import check_user_name
from securecomm.client.directory import file_stamp
from securecomm.crypto.devices import DeviceCert, DeviceList, UserPublicKey, valid_devices
from securecomm.crypto.identity import PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import ChangedKeyError, FormatError, NotFoundError, StaleDeviceListError, UsageError
from securecomm.files import PRIVATE_MODE, write_files


class VerifiedKeyChangedError(ChangedKeyError):
    """the user key of a VERIFIED contact has changed"""


@dataclass(frozen=True)
class Pin:
    name: str
    user_key: UserPublicKey
    first_seen: float
    counter: int = 0
    verified: bool = False
    pending: UserPublicKey | None = None
    #: SHA-256 of the signed part of list `counter` as accepted (None: pinned before it was kept). A list
    #: with the same counter must be byte-identical (PROTOCOL.md 6.3): two different lists with one
    #: number let a server choose which devices a contact seals to (the attacker's check after a restore).
    list_sha256: bytes | None = None


class Pins:
    def __init__(self, path: Path, entries: dict[str, Pin]) -> None:
        self.path = path
        self.entries = entries
        self.stamp = file_stamp(path)  # the version `entries` came from (or was saved as)

    def refresh(self) -> bool:
        """Reload if another process (`contacts trust`, `contacts verify`) saved since: a running chat
        then sees a trust at once, and never writes back the stale copy it held. True if reloaded."""
        if file_stamp(self.path) == self.stamp:
            return False
        fresh = Pins.load(self.path)
        self.entries, self.stamp = fresh.entries, fresh.stamp
        return True

    @classmethod
    def load(cls, path: Path) -> Pins:
        if not path.exists():
            return cls(path, {})
        try:
            raw = json.loads(path.read_text())
            entries = {name: Pin(name, UserPublicKey.from_line(e["user_key"]), float(e["first_seen"]),
                                 int(e.get("counter", 0)), bool(e.get("verified", False)),
                                 UserPublicKey.from_line(e["pending"]) if e.get("pending") else None,
                                 bytes.fromhex(e["list_sha256"]) if e.get("list_sha256") else None)
                       for name, e in raw.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{path} is not a valid user-key pin file") from e
        return cls(path, entries)

    def save(self) -> None:
        data = {p.name: {"user_key": p.user_key.line, "fingerprint": p.user_key.fingerprint_text,
                         "first_seen": p.first_seen, "counter": p.counter, "verified": p.verified,
                         **({"pending": p.pending.line} if p.pending else {}),
                         **({"list_sha256": p.list_sha256.hex()} if p.list_sha256 else {})}
                for p in self.entries.values()}
        write_files([(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), PRIVATE_MODE)],
                    force=True)
        self.stamp = file_stamp(self.path)
        self.path.with_name(self.path.name + ".bak").unlink(missing_ok=True)

    def get(self, name: str) -> Pin | None:
        self.refresh()
        return self.entries.get(name)

    def devices(self, name: str, user_key: UserPublicKey, dlist: DeviceList,
                certs: list[DeviceCert]) -> list[DeviceCert]:
        """The devices of `name` to seal to (or accept mail from), after pinning its user key.

        Raises ChangedKeyError (VerifiedKeyChangedError for a verified contact) for a user key
        other than the pinned one, and StaleDeviceListError for a list older than one seen."""
        check_user_name(name)
        known = self.get(name)
        if known is not None and not same(known.user_key.raw, user_key.raw):
            self._changed(known, user_key)
        last_counter = 0 if known is None else known.counter
        found = valid_devices(name, user_key, dlist, certs)
        if dlist.counter < last_counter:
            raise StaleDeviceListError(f"the server sent {name}'s device list {dlist.counter}, "
                                       f"older than list {last_counter} seen before")
        digest = sha256(dlist.signed_part)
        if known is None:
            self.entries[name] = Pin(name, user_key, time.time(), dlist.counter, list_sha256=digest)
            self.save()
        elif dlist.counter > known.counter or known.list_sha256 is None:
            self.entries[name] = replace(known, counter=dlist.counter, pending=None, list_sha256=digest)
            self.save()
        elif not same(digest, known.list_sha256):
            raise StaleDeviceListError(
                f"the server sent a device list {dlist.counter} of {name}'s that differs from the list "
                f"{dlist.counter} seen before; a list number is never reused, so the server (or a device of "
                f"{name}'s) is misbehaving: nothing was sealed with it",
                hint=f"tell {name}: removing or adding a device from one of their devices publishes a newer "
                     "list, which ends this")
        return found

    def _changed(self, known: Pin, user_key: UserPublicKey) -> None:
        if known.pending is None or not same(known.pending.raw, user_key.raw):
            self.entries[known.name] = replace(known, pending=user_key)
            self.save()
        cls = VerifiedKeyChangedError if known.verified else ChangedKeyError
        loud = "STOP: you VERIFIED this contact's safety number, and " if known.verified else ""
        # a verified contact's new key needs the fingerprint they read you (a bare `contacts trust` refuses
        # it: the new-user check found the hint offering that)
        trust = f"; or, after checking its fingerprint with them: securecomm contacts trust {known.name}" + (
            " --fingerprint FP (FP: the fingerprint they read you)" if known.verified else "")
        raise cls(f"{loud}the user key of {known.name} has CHANGED from {known.user_key.fingerprint_text} to "
                  f"{user_key.fingerprint_text}; this may be an attack, or they reset their account",
                  hint=f"compare safety numbers with {known.name} in person or on a call: securecomm contacts "
                       f"verify {known.name} (shows the number of the new key; on a match it trusts it){trust}")

    def migrate(self, name: str, legacy: PublicIdentity, user_key: UserPublicKey, dlist: DeviceList,
                certs: list[DeviceCert]) -> bool:
        """Pin `user_key` without a warning if its list certifies the identity pinned in version 1."""
        if self.get(name) is not None:
            return False
        found = valid_devices(name, user_key, dlist, certs)
        if not any(same(c.device.fingerprint, legacy.fingerprint) for c in found):
            return False
        self.entries[name] = Pin(name, user_key, time.time(), dlist.counter, list_sha256=sha256(dlist.signed_part))
        self.save()
        return True

    def trust(self, name: str) -> Pin:
        known = self.get(name)
        if known is None:
            raise NotFoundError(f"no contact named {name!r}")
        if known.pending is None:
            raise UsageError(f"{name}'s user key has not changed; nothing to trust")
        self.entries[name] = Pin(name, known.pending, time.time())  # a new key starts unverified, counter 0
        self.save()
        return self.entries[name]

    def mark_verified(self, name: str) -> Pin:
        known = self.get(name)
        if known is None:
            raise NotFoundError(f"no contact named {name!r}", hint=f"send {name} a message first")
        self.entries[name] = replace(known, verified=True)
        self.save()
        return self.entries[name]
