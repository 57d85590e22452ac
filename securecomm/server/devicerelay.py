"""The relay's door to devices and prekeys (docs/PROTOCOL.md 6.7): REQUEST ops and version-2 DIRECTs.

The checks are pure (server/deviceops.py); this adapter gives them a session's
facts and a database connection of their own, and turns outcomes into frames.
Its writes are small single transactions (a claim deletes one row per device)
run on the event loop; the group commit of messages is not involved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from securecomm.errors import OversizedError, StoreUnavailableError
from securecomm.server import intake
from securecomm.server.deviceops import Caller, DeviceOps, Notice, OpError, check_direct
from securecomm.store.devices import DeviceStore, RaceLost
from securecomm.timeutil import now_ms
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.crypto.prekeys import Envelope2
    from securecomm.server.session import Session
    from securecomm.store.db import User

log = logging.getLogger("securecomm.server")


#: Times a device op is run when other relays keep winning races on the same rows (then UNAVAILABLE).
RACE_RETRIES = 5


def is_version_2(envelope: bytes) -> bool:
    """Byte 4 of an envelope is its version (docs/PROTOCOL.md 2.2, 6.6)."""
    return len(envelope) > 4 and envelope[4] == 2


def checked_as_version_2(envelope: bytes, session_version: int) -> bool:
    """A version-2 session's DIRECT or ROOM_KEY goes through the version-2 checks unless it really is a
    version-1 envelope (magic and version byte), which gets its own refusal: anything else is malformed
    and gets the opaque INTEGRITY text (the spec-only client's check: junk was told "version 1 envelope
    refused", which is false)."""
    return is_version_2(envelope) or (session_version >= 2 and envelope[:5] != b"SCE1\x01")


class DeviceRelay:
    def __init__(self, opener: Callable[[], Any]) -> None:
        """`opener`: a store (store/db.py Store or store/postgres.py PostgresStore) of the relay's
        database, used for device requests only; its `device_sql()` is what store/devices.py runs on."""
        self._opener = opener
        #: Called with an account's name after a device left its list (server/files.py deletes its files).
        self.on_removed: Callable[[str], Any] | None = None
        self._ops: DeviceOps | None = None
        self._store: Any = None

    @property
    def ops(self) -> DeviceOps:
        if self._ops is None:
            self._store = self._opener()
            store = self._store
            self._ops = DeviceOps(DeviceStore(store.device_sql()),
                                  lambda name: None if (u := store.get_user(name)) is None else u.id)
        return self._ops

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def prekeys(self, device_id: bytes) -> int:
        """One-time prekeys held for a device (0 for one not listed): LOGIN_OK's `prekeys`."""
        return self.ops.store.available(device_id)

    def has_user_key(self, user_id: int) -> bool:
        """The account has a user key and a device list (6.3): its devices log in as themselves."""
        return self.ops.store.current(user_id) is not None

    def listed(self, user_id: int, device_id: bytes) -> bool:
        return self.ops.store.device_user(device_id) == user_id

    def identities(self, user_id: int) -> list[bytes]:
        return self.ops.store.identities(user_id)

    def removed_identities(self, user_id: int) -> list[bytes]:
        return self.ops.store.removed_identities(user_id)

    @staticmethod
    def caller(s: Session) -> Caller:
        assert s.user is not None
        return Caller(s.user.id, s.user.name, s.identity, s.password_hash is not None, s.config.max_frame, s.device)

    def request(self, s: Session, ev: P.Request, publish: Callable[[int, bytes], None]) -> bool:
        """Serve a device op; False if `ev.op` is not one. Its NOTICEs go to `publish(user_id, frame)`
        (the bus: every relay with a session of that account), which also ends a removed device's
        sessions wherever they are (server/relay.py `_user_frame`)."""
        if ev.op not in DeviceOps.OPS:
            return False
        try:
            outcome = self._handle(s, ev)
        except OpError as e:
            # a malformed argument (not hex, a list too long, a bad device name) is a broken client: BAD_FRAME,
            # fatal like every BAD_FRAME (3.6); every other refusal keeps the connection
            s.error(e.code, e.message, rid=ev.rid, fatal=e.code == P.ErrorCode.BAD_FRAME)
            return True
        except StoreUnavailableError as e:  # PostgreSQL lost, or another relay won a race: nothing written
            log.warning("%s %s not served: %s", s.label(), ev.op, e.message)
            s.error(P.ErrorCode.UNAVAILABLE, "the relay's database is unreachable or busy: nothing was changed; "
                    "retry shortly", rid=ev.rid)
            return True
        try:
            s.send(P.Result(ev.rid, outcome.data))
        except OversizedError:  # e.g. a prekey claim for many devices under a small --max-frame (attacker's
            # check: "internal server error" and the connection dropped); refused, the connection kept
            log.error("%s %s answer larger than --max-frame", s.label(), ev.op)
            s.error(P.ErrorCode.TOO_LARGE, f"the answer to {ev.op!r} is larger than this server's frame limit "
                    f"({s.config.max_frame} bytes); its operator should raise --max-frame", rid=ev.rid)
        assert s.user is not None
        if s.device is None and s.identity is not None and (not s.awaiting_pairing or ev.op == "device_list_publish") \
                and self.listed(s.user.id, s.identity.fingerprint):
            # a first device that just published its list, or a pending one that reset the user key (6.4 end):
            # a listed device from now, with its mail
            s.device, s.awaiting_pairing = s.identity.fingerprint, False
        for notice in outcome.notices:
            frame = self.notice_frame(notice)
            if frame is not None:
                publish(notice.user_id, P.encode_event(frame))
        if outcome.close and self.on_removed is not None:
            self.on_removed(s.user.name)
        return True

    def _handle(self, s: Session, ev: P.Request) -> Any:
        """The op, run again when another relay's transaction on the same rows won (PostgreSQL): the
        losing one wrote nothing (store/devices.py RaceLost)."""
        for attempt in range(RACE_RETRIES):
            try:
                return self.ops.handle(self.caller(s), ev.op, ev.args)
            except RaceLost:
                if attempt == RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def notice_frame(self, notice: Notice) -> P.Notice | None:
        """The NOTICE frame for an outcome's notice (docs/PROTOCOL.md 6.7); None for an unknown account."""
        user = self._user_name(notice.user_id)
        if user is None:
            return None
        named = notice.body.get("device")
        device = notice.device if notice.device is not None else bytes.fromhex(named) if isinstance(named, str) \
            else None
        counter = notice.body.get("counter")
        return P.Notice(notice.event, user, device, counter if isinstance(counter, int) else None)

    def _user_name(self, user_id: int) -> str | None:
        assert self.ops is not None and self._store is not None  # opened with the ops
        user = self._store.get_user_by_id(user_id)
        return None if user is None else user.name

    def check(self, s: Session, envelope: bytes, to: User | None, name: str, window_ms: int
              ) -> Envelope2 | intake.Refusal:
        """A version-2 DIRECT: the recipient's listed devices, then the pure checks."""
        if to is None:
            return intake.Refusal(P.ErrorCode.NOT_FOUND, f"no user named {name[:40]!r}")
        assert s.user is not None
        # one read, every message (no cache): a device removed a moment ago is refused at once
        devices, owner = self.ops.store.direct_targets(to.id, s.identity.fingerprint if s.identity else b"")
        if not devices:
            return intake.Refusal(P.ErrorCode.NOT_FOUND, f"{to.name} has no devices yet")
        if s.identity is None or owner != s.user.id:
            if s.device is not None:  # listed when it logged in (or since): removed meanwhile
                return intake.Refusal(P.ErrorCode.DEVICE_REMOVED, "this device is not on your device list: "
                                      "its messages are refused")
            # never a listed device in this session: a password-only login, or a key no list names yet. Not
            # "removed" (the spec-only client was told so, fatally, and would have asked to be paired again)
            return intake.Refusal(P.ErrorCode.FORBIDDEN, "this session is no listed device of its account: only a "
                                  "device on the account's list sends direct messages and room keys")
        try:
            return check_direct(envelope, s.identity, devices, window_ms, now_ms())
        except OpError as e:
            return intake.Refusal(e.code, e.message, e.detail)
