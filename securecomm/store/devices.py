"""The server's durable record of user keys, devices, prekeys and pairings (docs/PROTOCOL.md 6.3-6.5).

Theory of operation
-------------------
The server checks signatures before it calls anything here (crypto/devices.py,
crypto/prekeys.py); this module only keeps what passed, atomically:

- `publish_list` replaces an account's list only if the counter grows (the
  compare is inside the transaction, so two racing publishes cannot both win)
  and drops the devices no longer listed, with their prekeys (cascade);
- `upload_prekeys` refuses a batch whose ids are not above every id this
  device used before (a replay), or that would hold more than MAX_HELD;
- `claim` hands out one prekey per listed device and deletes a one-time
  prekey in the same transaction, so no two claimants ever get the same one;
- pairings are keyed by the code's digest, never the code.

SQL is literal with parameters only, written once for both backends: SQLite takes it as is, and
PostgreSQL through store/postgres.py `PgSql` (placeholders, and BEGIN IMMEDIATE as a SERIALIZABLE
transaction, so that the compare-then-write steps above hold between relays as they do in one
SQLite file; a transaction that loses such a race is StoreUnavailableError: retry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from securecomm.crypto import prekeys as K
from securecomm.crypto.devices import DeviceCert, DeviceList
from securecomm.errors import (
    FormatError,
    PairingExpiredError,
    PairingUnknownError,
    PairingUsedError,
    ReplayedPrekeyError,
    StaleDeviceListError,
    StoreUnavailableError,
)


class RaceLost(StoreUnavailableError):
    """Another relay's transaction on the same rows committed first (PostgreSQL SERIALIZABLE): this
    one wrote nothing and may simply be run again."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Claimed:
    cert: bytes
    prekey: bytes
    kind: int


@dataclass(frozen=True)
class Pending:
    user_id: int
    device_id: bytes
    identity: bytes
    name: str
    expires_ms: int


class Sql(Protocol):
    """What the device store needs of a connection in autocommit mode: sqlite3.Connection is one,
    store/postgres.py PgSql is the other."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


class DeviceStore:
    """Devices and prekeys on a connection of the server's store (autocommit mode, as store/db.py)."""

    def __init__(self, db: Sql) -> None:
        self.db = db

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- device lists ------------------------------------------------------------------
    def current(self, user_id: int) -> tuple[bytes, bytes, list[bytes]] | None:
        """(user key, encoded list, certificates of the listed devices), or None."""
        row = self.db.execute("SELECT user_key, device_list FROM user_keys WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return None
        certs = [c for (c,) in self.db.execute(
            "SELECT cert FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,))]
        return bytes(row[0]), bytes(row[1]), [bytes(c) for c in certs]

    def publish_list(self, user_id: int, dlist: DeviceList, certs: list[DeviceCert], *,
                     reset: bool = False) -> list[bytes]:
        """Store a verified list and the certificates of its devices; return the removed device ids.
        A new user key is accepted only with `reset` (6.4)."""
        by_id = {c.device_id: c for c in certs}
        if set(by_id) != set(dlist.devices):
            raise FormatError("every listed device needs its certificate, and only those")
        with self._transaction():
            for cert in certs:
                owner = self.device_user(cert.device_id)
                if owner is not None and owner != user_id:
                    raise FormatError("a listed device belongs to another account")
            self._replace_list(user_id, dlist, reset)
            gone_rows = [(bytes(d), bytes(c)) for d, c in self.db.execute(
                "SELECT device_id, cert FROM devices WHERE user_id = ?", (user_id,)) if bytes(d) not in by_id]
            gone = [d for d, _ in gone_rows]
            now = _now_ms()
            # remembered, so that the removed device's key login is told so (DEVICE_REMOVED), and its
            # waiting mail goes with it (6.7); a device paired again later is forgotten here
            self.db.executemany(
                "INSERT INTO removed_devices (device_id, user_id, identity, removed_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id, identity = excluded.identity, "
                "removed_ms = excluded.removed_ms",
                [(d, user_id, DeviceCert.decode(c).device.encode(), now) for d, c in gone_rows])
            # and mail it sent that still waits: its recipients check it against the new list, which no
            # longer has it, and could only call it a forgery (the attacker's check: "REJECTED a message
            # claiming to be from bob")
            self.db.executemany("DELETE FROM mailbox WHERE recipient_device = ? OR sender_device = ?",
                                [(d, d) for d in gone])
            self.db.executemany("DELETE FROM devices WHERE device_id = ?", [(d,) for d in gone])
            # and its pairing records: an old approval must not be handed to it again (pair_complete), so
            # that logging in there again starts a new pairing (6.4)
            self.db.executemany("DELETE FROM pairings WHERE device_id = ?", [(d,) for d in gone])
            self.db.executemany("DELETE FROM removed_devices WHERE device_id = ?", [(d,) for d in by_id])
            for cert in certs:
                self.db.execute(
                    "INSERT INTO devices (device_id, user_id, cert, name, added_ms) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (device_id) DO UPDATE SET cert = excluded.cert, name = excluded.name",
                    (cert.device_id, user_id, cert.encode(), cert.name, cert.added_ms))
        return gone

    def _replace_list(self, user_id: int, dlist: DeviceList, reset: bool) -> None:
        row = self.db.execute("SELECT user_key, counter FROM user_keys WHERE user_id = ?", (user_id,)).fetchone()
        if row is not None and bytes(row[0]) != dlist.user_key and not reset:
            raise StaleDeviceListError("the account has another user key (a new one needs --reset-user-key)")
        if row is not None and bytes(row[0]) == dlist.user_key and dlist.counter <= row[1]:
            raise StaleDeviceListError(f"device list {dlist.counter} is not newer than the stored {row[1]}")
        self.db.execute(
            "INSERT INTO user_keys (user_id, user_key, counter, device_list) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET user_key = excluded.user_key, counter = excluded.counter, "
            "device_list = excluded.device_list", (user_id, dlist.user_key, dlist.counter, dlist.encode()))

    def identities(self, user_id: int) -> list[bytes]:
        """The device identities (binary form, section 1) of the account's listed devices."""
        return [DeviceCert.decode(bytes(c)).device.encode() for (c,) in self.db.execute(
            "SELECT cert FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,))]

    def removed_identities(self, user_id: int) -> list[bytes]:
        """The identities of devices once listed for this account and removed since."""
        return [bytes(i) for (i,) in self.db.execute(
            "SELECT identity FROM removed_devices WHERE user_id = ? ORDER BY removed_ms DESC LIMIT 100",
            (user_id,))]

    def device_user(self, device_id: bytes) -> int | None:
        row = self.db.execute("SELECT user_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else int(row[0])

    def cert(self, device_id: bytes) -> bytes | None:
        row = self.db.execute("SELECT cert FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def last_resort_ms(self, device_id: bytes) -> int | None:
        row = self.db.execute("SELECT prekey FROM prekeys WHERE device_id = ? AND kind = ?",
                              (device_id, K.LAST_RESORT)).fetchone()
        return None if row is None else K.Prekey.decode(bytes(row[0])).created_ms

    def touch(self, device_id: bytes, now_ms: int) -> None:
        self.db.execute("UPDATE devices SET last_seen_ms = ? WHERE device_id = ?", (now_ms, device_id))

    def direct_targets(self, user_id: int, sender_device: bytes) -> tuple[set[bytes], int | None]:
        """For a version-2 DIRECT, in one read: the listed device ids of `user_id` (the recipient), and
        the account `sender_device` is listed for (None: not listed, e.g. removed)."""
        rows = self.db.execute("SELECT device_id, user_id FROM devices WHERE user_id = ? OR device_id = ?",
                               (user_id, sender_device)).fetchall()
        owner = next((int(u) for d, u in rows if bytes(d) == sender_device), None)
        return {bytes(d) for d, u in rows if u == user_id}, owner

    def devices(self, user_id: int) -> list[tuple[bytes, str, int, int | None]]:
        """(device id, name, added_ms, last_seen_ms) of each listed device."""
        return [(bytes(d), n, a, s) for d, n, a, s in self.db.execute(
            "SELECT device_id, name, added_ms, last_seen_ms FROM devices WHERE user_id = ? ORDER BY added_ms",
            (user_id,))]

    # -- prekeys -------------------------------------------------------------------------
    def upload_prekeys(self, device_id: bytes, one_time: list[K.Prekey], last_resort: K.Prekey | None) -> int:
        """Store a verified batch; every id must be above all this device used before. Returns
        the one-time prekeys now held."""
        new = [*one_time, *([last_resort] if last_resort else [])]
        with self._transaction():
            row = self.db.execute("SELECT max_prekey_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                raise FormatError("prekeys from a device that is not on its user's list")
            if new and min(p.prekey_id for p in new) <= row[0]:
                raise ReplayedPrekeyError("a prekey id this device used before (replay)")
            if self.available(device_id) + len(one_time) > K.MAX_HELD:
                raise FormatError(f"a device holds at most {K.MAX_HELD} one-time prekeys")
            if last_resort is not None:
                self.db.execute("DELETE FROM prekeys WHERE device_id = ? AND kind = ?", (device_id, K.LAST_RESORT))
            self.db.executemany("INSERT INTO prekeys (device_id, kind, prekey_id, prekey) VALUES (?, ?, ?, ?)",
                                [(device_id, p.kind, p.prekey_id, p.encode()) for p in new])
            if new:
                self.db.execute("UPDATE devices SET max_prekey_id = ? WHERE device_id = ?",
                                (max(p.prekey_id for p in new), device_id))
            return self.available(device_id)

    def max_prekey_id(self, device_id: bytes) -> int:
        """The highest prekey id this device ever uploaded (0 for none, or no such device)."""
        row = self.db.execute("SELECT max_prekey_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def available(self, device_id: bytes) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM prekeys WHERE device_id = ? AND kind = ?",
                               (device_id, K.ONE_TIME)).fetchone()
        return int(n)

    def handed_out_below(self, device_id: bytes) -> int:
        """Every one-time prekey id of the device under this number that it uploaded was handed out
        (6.5): its lowest one-time id held, else one above any id it used. Claims take the lowest
        and uploads go above every id used, so the held ones are always the highest uploaded."""
        (low,) = self.db.execute("SELECT MIN(prekey_id) FROM prekeys WHERE device_id = ? AND kind = ?",
                                 (device_id, K.ONE_TIME)).fetchone()
        if low is not None:
            return int(low)
        row = self.db.execute("SELECT max_prekey_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return 1 + (int(row[0]) if row is not None and row[0] is not None else 0)

    def claim(self, user_id: int, skip: bytes | None = None,
              one_time_ok: Callable[[bytes], bool] = lambda _: True,
              only: set[bytes] | None = None,
              check: Callable[[list[Claimed]], None] = lambda _: None) -> list[Claimed]:
        """One prekey for each listed device of `user_id` but `skip` (the claimant's own device), and
        with `only`, for those of them in it:
        its lowest one-time prekey, deleted here, else its last-resort prekey. `one_time_ok(device)`
        is asked before a one-time prekey is handed out (the server's budgets); False: last resort.
        `check(claimed)` runs before the commit: what it raises undoes the claim."""
        out = []
        with self._transaction():
            for device_id, cert in self.db.execute(
                    "SELECT device_id, cert FROM devices WHERE user_id = ? ORDER BY device_id", (user_id,)).fetchall():
                device_id = bytes(device_id)
                if device_id == skip or (only is not None and device_id not in only):
                    continue
                row = self.db.execute(
                    "SELECT kind, prekey_id, prekey FROM prekeys WHERE device_id = ? "
                    "ORDER BY kind, prekey_id LIMIT 1", (device_id,)).fetchone()
                if row is not None and row[0] == K.ONE_TIME and not one_time_ok(bytes(device_id)):
                    row = self.db.execute("SELECT kind, prekey_id, prekey FROM prekeys WHERE device_id = ? "
                                          "AND kind = ?", (device_id, K.LAST_RESORT)).fetchone()
                if row is None:
                    continue  # a device with no prekey at all cannot be sealed to: it is skipped
                if row[0] == K.ONE_TIME:
                    gone = self.db.execute("DELETE FROM prekeys WHERE device_id = ? AND kind = ? AND prekey_id = ?",
                                           (device_id, K.ONE_TIME, row[1])).rowcount
                    if gone != 1:  # taken meanwhile (cannot happen inside the transaction): never hand it out
                        raise ReplayedPrekeyError("a one-time prekey was claimed twice")
                out.append(Claimed(bytes(cert), bytes(row[2]), int(row[0])))
            check(out)
        return out

    # -- pairing ---------------------------------------------------------------------------
    def start_pairing(self, user_id: int, digest: bytes, device_id: bytes, identity: bytes, name: str,
                      expires_ms: int) -> None:
        """A new code for a pending device replaces its earlier one."""
        with self._transaction():
            self.db.execute("DELETE FROM pairings WHERE device_id = ?", (device_id,))
            self.db.execute("INSERT INTO pairings (digest, user_id, device_id, identity, name, expires_ms) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (digest, user_id, device_id, identity, name, expires_ms))

    def pending(self, user_id: int, digest: bytes, now_ms: int) -> Pending:
        row = self.db.execute("SELECT user_id, device_id, identity, name, expires_ms, used FROM pairings "
                              "WHERE digest = ? AND user_id = ?", (digest, user_id)).fetchone()
        if row is None:
            raise PairingUnknownError("no such pairing code for this account")
        if row[5]:
            raise PairingUsedError("this pairing code was already used")
        if now_ms >= row[4]:
            raise PairingExpiredError("this pairing code has expired: start again on the new device")
        return Pending(int(row[0]), bytes(row[1]), bytes(row[2]), row[3], int(row[4]))

    def approve(self, user_id: int, digest: bytes, now_ms: int, approval: bytes) -> Pending:
        """Mark the code used and keep the approval for `pair_complete`, in one step:
        of two approvals racing for one code, exactly one wins."""
        with self._transaction():
            found = self.pending(user_id, digest, now_ms)
            self.db.execute("UPDATE pairings SET used = 1, approval = ? WHERE digest = ?", (approval, digest))
        return found

    def approval(self, device_id: bytes) -> bytes | None:
        row = self.db.execute("SELECT approval FROM pairings WHERE device_id = ? AND used = 1",
                              (device_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def prune_pairings(self, now_ms: int) -> int:
        return self.db.execute("DELETE FROM pairings WHERE expires_ms <= ? AND used = 0", (now_ms,)).rowcount
