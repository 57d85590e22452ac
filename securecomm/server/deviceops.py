"""The server's device, prekey and pairing requests (docs/PROTOCOL.md 6.7), with no I/O.

Theory of operation
-------------------
    REQUEST {op, args} ──► DeviceOps.handle(caller, op, args) ──► Outcome(data, notices, close)
                                   │ checks (crypto/devices.py, crypto/prekeys.py)
                                   ▼
                           DeviceStore (SQLite, atomic)

The session that owns the connection turns an Outcome into a RESULT, sends
each Notice to the sessions of the account it names, and ends the sessions of
every device in `close` with DEVICE_REMOVED. A refusal is an OpError carrying
the wire code of section 6.10; nothing is stored for it and the connection
stays. Every signature is checked here, before the store is touched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from securecomm.crypto import devices as D
from securecomm.crypto import prekeys as K
from securecomm.crypto.identity import PublicIdentity
from securecomm.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    PairingError,
    ReplayedPrekeyError,
    SecurecommError,
)
from securecomm.store.devices import Claimed, DeviceStore
from securecomm.wire.messages import OPAQUE_TEXTS, ErrorCode, Result

#: Claims per minute by one account, sustained: every direct message claims one prekey per
#: recipient device, so this is a writing pace (one a second), and it bounds how fast one account
#: drains someone's one-time prekeys (after which they only lose forward secrecy to the
#: last-resort key, which the recipient is told about).
CLAIMS_PER_MINUTE = 60
#: Claims one account may make at once before that pace applies (a token bucket): a burst of
#: messages (a pasted text, a script's batch) goes through; 240 is above the 200 prekeys a device
#: holds at most, so a burst meets the last-resort key before the limit.
CLAIM_BURST = 240
#: Ops that write the device store, and their budget per account (all its sessions and pending
#: devices): each is a synchronous SQLite transaction on the relay's event loop, so a flood of them
#: (attack check: 8 connections of `pair_start` made another user's login wait 16.7 s) is held to
#: WRITES_PER_MINUTE after a burst of WRITE_BURST. A real account makes a handful: a first device
#: publishes and uploads, a pairing starts, approves, completes and uploads, a refill uploads once;
#: 40 covers adding all 10 devices in a row.
WRITE_OPS = frozenset({"device_list_publish", "device_remove", "prekeys_upload", "pair_start", "pair_approve"})
WRITE_BURST = 40
WRITES_PER_MINUTE = 60
#: What a removed device is told when its sessions end or its key logs in (DEVICE_REMOVED): both ways a
#: device leaves the list, since the server does not keep which one it was.
#: No prekeys_claim answer is larger: 10 devices x (a certificate and a hybrid prekey, about 5.8 KiB in hex)
#: and the list. Under a --max-frame this large the answer is not encoded twice to check it fits.
CLAIM_ANSWER_BOUND = 128 * 1024
DEVICE_REMOVED_TEXT = ("this device was removed from your device list (by `devices remove`, or by `user login "
                       "--reset-user-key` on another device, which made a new user key)")
#: Hex strings longer than this are refused before decoding (a batch of 100 hybrid prekeys is 259,600).
MAX_HEX = 2 * 1024 * 1024


class OpError(Exception):
    """A refused device request or DIRECT. `message` is what the peer is told: for an opaque code its
    fixed text (PROTOCOL.md 5.5.1), so a prober never learns which check failed; `detail` is for the log."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.detail = message
        self.message = OPAQUE_TEXTS.get(code, message)


@dataclass(frozen=True)
class Caller:
    """What the session knows about whoever sent the request."""

    user_id: int
    user: str
    device: PublicIdentity | None  # the device key proved in this connection, if any
    proved_password: bool = False
    #: The largest frame the session may be sent (--max-frame); None: no limit (tests of the ops alone).
    max_frame: int | None = None
    #: The session's device id when that device is listed (None: password-only, or waiting to be paired).
    listed: bytes | None = None

    @property
    def budget(self) -> tuple[int, bytes]:
        """Whose rate budgets a request spends: each listed device its own, and the account's sessions
        that are no listed device one between them. Per account, a stolen phone not yet removed spent
        every budget and its owner could not remove it (the attacker's check)."""
        return self.user_id, self.listed or b""


@dataclass(frozen=True)
class Notice:
    user_id: int
    event: str
    body: dict[str, Any]
    device: bytes | None = None  # only to this device's sessions; None: every session of the account


@dataclass
class Outcome:
    data: Any
    notices: list[Notice] = field(default_factory=list)
    close: list[bytes] = field(default_factory=list)  # device ids whose sessions end


def _hex(args: dict[str, Any], name: str, *, optional: bool = False) -> bytes | None:
    value = args.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_HEX:
        raise OpError(ErrorCode.BAD_FRAME, f"argument {name!r} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as e:
        raise OpError(ErrorCode.BAD_FRAME, f"argument {name!r} is not hex") from e


def _need(args: dict[str, Any], name: str) -> bytes:
    value = _hex(args, name)
    assert value is not None
    return value


def _hex_list(args: dict[str, Any], name: str, limit: int) -> list[bytes]:
    value = args.get(name)
    if not isinstance(value, list) or len(value) > limit:
        raise OpError(ErrorCode.BAD_FRAME, f"argument {name!r} must be a list of at most {limit} hex strings")
    return [_need({name: v}, name) for v in value]


ONE_TIME_PER_HOUR = 100  # one-time prekeys one device hands out an hour, to everyone (6.5)
PAIR_BURST = 20  # ... and to one claiming account (6.5)
TOUCH_EVERY_MS = 60_000  # last_seen is written at most once a minute per device (6.4)


class DeviceOps:
    OPS = ("device_list", "device_list_publish", "device_remove", "prekeys_upload", "prekeys_status",
           "prekeys_claim", "pair_start", "pair_lookup", "pair_approve", "pair_complete")

    def __init__(self, store: DeviceStore, find_user: Callable[[str], int | None],
                 clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.store = store
        self.find_user = find_user
        self.clock = clock
        self._claims: dict[tuple[int, bytes], tuple[float, int]] = {}  # Caller.budget -> (tokens left, when)
        self._writes: dict[tuple[int, bytes], tuple[float, int]] = {}  # Caller.budget -> (tokens left, when)
        self._buckets: dict[tuple[int, bytes, int], tuple[float, int]] = {}  # (size, device, claimer|0)

    def handle(self, caller: Caller, op: str, args: dict[str, Any]) -> Outcome:
        """Serve one op, or raise OpError with the code of docs/PROTOCOL.md 6.10."""
        method = getattr(self, "_" + op, None) if op in self.OPS else None
        if method is None:
            raise OpError(ErrorCode.UNKNOWN_TYPE, f"unknown request {op!r}")
        if op in WRITE_OPS and not self._take(self._writes, caller.budget, WRITE_BURST, WRITES_PER_MINUTE):
            raise OpError(ErrorCode.RATE_LIMITED, f"more than {WRITE_BURST} device changes at once, or "
                          f"{WRITES_PER_MINUTE} a minute after that: try again shortly")
        try:
            outcome: Outcome = method(caller, args)
        except OpError:
            raise
        except PairingError as e:
            raise OpError(ErrorCode.PAIRING, e.message) from e
        except NotFoundError as e:
            raise OpError(ErrorCode.NOT_FOUND, e.message) from e
        except SecurecommError as e:
            raise OpError(ErrorCode.INTEGRITY, e.message) from e
        return outcome

    # -- helpers ---------------------------------------------------------------------------------
    def _listed(self, caller: Caller) -> bytes:
        """The caller's device id, if that device is on its account's list; else FORBIDDEN."""
        if caller.device is None or self.store.device_user(caller.device.fingerprint) != caller.user_id:
            raise OpError(ErrorCode.FORBIDDEN, "this session is not a listed device of its account")
        return caller.device.fingerprint

    def _user(self, args: dict[str, Any]) -> tuple[int, str]:
        name = args.get("user")
        name = name.lower() if isinstance(name, str) and name.isascii() else ""
        uid = self.find_user(name) if name else None
        if uid is None:
            raise OpError(ErrorCode.NOT_FOUND, f"no user named {name[:40]!r}")
        return uid, name

    def _directory(self, uid: int, user: str) -> dict[str, Any]:
        current = self.store.current(uid)
        if current is None:
            # the account exists: say so, or it reads as a typo in the name (as `lookup` does, relay.py)
            raise OpError(ErrorCode.NOT_FOUND, f"user {user!r} exists but has no device set up yet (no login "
                          "with a key on this version), so nothing can be sealed to them (ask them to run: "
                          f"securecomm user login {user})")
        user_key, dlist, certs = current
        return {"user": user, "user_key": D.UserPublicKey(user_key).line, "device_list": dlist.hex(),
                "certs": [c.hex() for c in certs]}

    def _checked_list(self, caller: Caller, args: dict[str, Any], *, reset: bool = False
                      ) -> tuple[D.DeviceList, list[D.DeviceCert], D.DeviceList | None]:
        """Parse and verify a list and its certificates against the account's user key
        (or, for a first list or a reset, the key it names). Returns (list, certs, stored list)."""
        try:
            dlist = D.DeviceList.decode(_need(args, "device_list"))
            certs = [D.DeviceCert.decode(c) for c in _hex_list(args, "certs", D.MAX_DEVICES)]
            current = self.store.current(caller.user_id)
            old = None if current is None else D.DeviceList.decode(current[1])
            pinned = D.UserPublicKey(dlist.user_key if old is None or reset else old.user_key)
            dlist.verify(caller.user, pinned, last=None if reset else old)
            for cert in certs:
                cert.verify(caller.user, pinned)
        except IntegrityError as e:
            raise OpError(ErrorCode.DEVICE_LIST, e.message) from e
        if {c.device_id for c in certs} != set(dlist.devices):
            raise OpError(ErrorCode.DEVICE_LIST, "every listed device needs its certificate, and only those")
        return dlist, certs, old

    def _store_list(self, caller: Caller, dlist: D.DeviceList, certs: list[D.DeviceCert],
                    old: D.DeviceList | None, *, reset: bool = False) -> Outcome:
        try:
            gone = self.store.publish_list(caller.user_id, dlist, certs, reset=reset)
        except (FormatError, IntegrityError) as e:
            raise OpError(ErrorCode.DEVICE_LIST, e.message) from e
        added = [d for d in dlist.devices if old is None or not old.has(d)]
        notices = [Notice(caller.user_id, "device_added", {"device": d.hex(), "counter": dlist.counter})
                   for d in added]
        notices += [Notice(caller.user_id, "device_removed", {"device": d.hex(), "counter": dlist.counter})
                    for d in gone]
        return Outcome({"counter": dlist.counter}, notices, gone)

    # -- device lists ----------------------------------------------------------------------------
    def _device_list(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        uid, user = self._user(args)
        data = self._directory(uid, user)
        if uid == caller.user_id:  # only the account itself learns when its devices were seen
            seen_ms = {d: seen for d, _, _, seen in self.store.devices(uid)}
            me, now = None if caller.device is None else caller.device.fingerprint, self.clock()
            # A write per request is an fsync on the event loop (attack F6): only when stale.
            last = seen_ms.get(me) if me is not None else None
            if me is not None and me in seen_ms and (last is None or now - last >= TOUCH_EVERY_MS):
                self.store.touch(me, now)
                seen_ms[me] = now
            data["last_seen"] = {d.hex(): seen for d, seen in seen_ms.items()}
        return Outcome(data)

    def _device_list_publish(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        if caller.device is None:
            raise OpError(ErrorCode.FORBIDDEN, "publishing a device list needs a device key proved in this session")
        reset = args.get("reset") is True
        if reset and not caller.proved_password:
            raise OpError(ErrorCode.FORBIDDEN, "a new user key needs the password in this session")
        dlist, certs, old = self._checked_list(caller, args, reset=reset)
        me = caller.device.fingerprint
        if not dlist.has(me) or (old is not None and not reset and not old.has(me)):
            raise OpError(ErrorCode.FORBIDDEN, "this session is not a listed device of its account")
        # A device enters a list only with proof it agreed (attack F1: a list could name any
        # account's registered device key and so lock its owner out of his own list): the device
        # key proved in this session, one already on this account's list, or (pair_approve) the
        # device that asked to pair. Nothing else.
        known = {me, *(old.devices if old is not None else ())}
        stranger = next((d for d in dlist.devices if d not in known), None)
        if stranger is not None:
            raise OpError(ErrorCode.DEVICE_LIST, f"device {stranger.hex()[:16]} never proved its key to this "
                          "account: a new device joins by pairing (section 6.4)")
        return self._store_list(caller, dlist, certs, old, reset=reset)

    def _device_remove(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        self._listed(caller)
        device = _need(args, "device")
        dlist, certs, old = self._checked_list(caller, args)
        if old is None or not old.has(device):
            raise OpError(ErrorCode.NOT_FOUND, "no such device on this account's list")
        if set(dlist.devices) != set(old.devices) - {device}:
            raise OpError(ErrorCode.DEVICE_LIST, "the new list must be the current one without that device")
        outcome = self._store_list(caller, dlist, certs, old)
        outcome.data["removed"] = device.hex()
        return outcome

    # -- prekeys -------------------------------------------------------------------------------------
    def _prekeys_upload(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        device_id = self._listed(caller)
        assert caller.device is not None
        batch = args.get("one_time")
        if isinstance(batch, list) and len(batch) > K.MAX_BATCH:  # a refusal of its own, not a malformed frame
            raise OpError(ErrorCode.PREKEY, f"a batch holds at most {K.MAX_BATCH} prekeys")
        # Cheap refusals before any signature or KEM work (attack F5: a replayed batch cost ~8 ms
        # of event-loop CPU before the store refused it): ids must be above the stored maximum and
        # the batch must fit beside the prekeys held. The store checks both again in its transaction.
        raw_one_time = _hex_list(args, "one_time", K.MAX_BATCH)
        if self.store.available(device_id) + len(raw_one_time) > K.MAX_HELD:
            raise OpError(ErrorCode.PREKEY, f"a device holds at most {K.MAX_HELD} one-time prekeys")
        max_id = self.store.max_prekey_id(device_id)

        def used(prekey_id: int) -> bool:
            return prekey_id <= max_id

        try:
            one_time = K.verify_batch(caller.device, raw_one_time, kind=K.ONE_TIME, seen=used)
            raw_last = _hex(args, "last_resort", optional=True)
            last = None if raw_last is None else K.verify_batch(caller.device, [raw_last], kind=K.LAST_RESORT,
                                                                  seen=used)[0]
            if last is not None and any(p.prekey_id == last.prekey_id for p in one_time):
                raise ReplayedPrekeyError(f"prekey id {last.prekey_id} given twice")
            available = self.store.upload_prekeys(device_id, one_time, last)
        except IntegrityError as e:
            raise OpError(ErrorCode.PREKEY, e.message) from e
        return Outcome({"available": available})

    def _prekeys_status(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        device_id = self._listed(caller)
        return Outcome({"available": self.store.available(device_id),
                        "last_resort_ms": self.store.last_resort_ms(device_id),
                        "handed_out_below": self.store.handed_out_below(device_id)})

    def _prekeys_claim(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        uid, user = self._user(args)
        self._rate(caller)
        directory = self._directory(uid, user)
        skip = caller.device.fingerprint if caller.device is not None and uid == caller.user_id else None
        # `devices`: only these (a room key goes to the devices in the room, not to every device of a member)
        only = set(_hex_list(args, "devices", D.MAX_DEVICES)) if args.get("devices") is not None else None
        def answer(claimed: list[Claimed]) -> dict[str, Any]:
            return dict(directory, certs=[c.cert.hex() for c in claimed], prekeys=[c.prekey.hex() for c in claimed])

        def fits(claimed: list[Claimed]) -> None:
            # checked before the claim commits: an answer refused for its size must not use up prekeys (21:
            # the type byte and room for the longest rid)
            # (attacker's check: under a small --max-frame each refused try took one from every device)
            if caller.max_frame is not None and caller.max_frame < CLAIM_ANSWER_BOUND \
                    and 21 + len(Result(0, answer(claimed)).encode_body()) > caller.max_frame:
                raise OpError(ErrorCode.TOO_LARGE, f"the answer to 'prekeys_claim' is larger than this server's "
                              f"frame limit ({caller.max_frame} bytes); its operator should raise --max-frame")

        claimed = self.store.claim(uid, skip=skip, one_time_ok=lambda device: self._one_time_ok(caller.user_id, device),
                                   only=only, check=fits)
        notices = []
        for c in claimed:
            device_id = D.DeviceCert.decode(c.cert).device_id
            if c.kind == K.ONE_TIME and self.store.available(device_id) == K.REFILL_BELOW - 1:
                notices.append(Notice(uid, "prekeys_low", {}, device_id))
        return Outcome(answer(claimed), notices)

    def _one_time_ok(self, claimer: int, device: bytes) -> bool:
        """Budgets of one-time prekeys (attack F2: two accounts drained a user's prekeys in 0.1 s):
        per target device ONE_TIME_PER_HOUR, per (claimer, device) pair PAIR_BURST, each refilling
        evenly over an hour. Beyond either, the claim gets the last-resort prekey (6.5): a burst of
        messages still goes, without one-time forward secrecy for the rest of it."""
        now = self.clock()
        if len(self._buckets) > 100_000:  # forget the full ones (a full bucket is the default)
            self._buckets = {k: v for k, v in self._buckets.items() if self._level(v, now, k[0]) < k[0]}
        target, pair = (ONE_TIME_PER_HOUR, device, 0), (PAIR_BURST, device, claimer)
        levels = [self._level(self._buckets.get(k), now, k[0]) for k in (target, pair)]
        if min(levels) < 1:
            return False
        for k, level in zip((target, pair), levels, strict=True):
            self._buckets[k] = (level - 1, now)
        return True

    @staticmethod
    def _level(bucket: tuple[float, int] | None, now: int, size: int) -> float:
        if bucket is None:
            return float(size)
        level, since = bucket
        return min(float(size), level + (now - since) * size / 3_600_000)

    def _rate(self, caller: Caller) -> None:
        """A token bucket per Caller.budget: CLAIM_BURST at once, then CLAIMS_PER_MINUTE."""
        if not self._take(self._claims, caller.budget, CLAIM_BURST, CLAIMS_PER_MINUTE):
            raise OpError(ErrorCode.RATE_LIMITED, f"more than {CLAIM_BURST} prekey claims at once, or "
                          f"{CLAIMS_PER_MINUTE} a minute after that")

    def _take(self, buckets: dict[tuple[int, bytes], tuple[float, int]], budget: tuple[int, bytes], burst: int,
              per_minute: int) -> bool:
        """One token from the bucket of `budget` (a Caller.budget; `burst` at most, refilled at `per_minute`);
        False if none."""
        now = self.clock()
        if len(buckets) > 100_000:  # forget the full ones (a full bucket is the default)
            for k in [k for k, (t, at) in buckets.items() if t + (now - at) * per_minute / 60_000 >= burst]:
                del buckets[k]
        tokens, last = buckets.get(budget, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * per_minute / 60_000)
        if tokens < 1:
            buckets[budget] = (tokens, now)
            return False
        buckets[budget] = (tokens - 1, now)
        return True

    # -- pairing ---------------------------------------------------------------------------------------
    def _pending_device(self, caller: Caller) -> PublicIdentity:
        if caller.device is None or self.store.current(caller.user_id) is None \
                or self.store.device_user(caller.device.fingerprint) is not None:
            raise OpError(ErrorCode.FORBIDDEN, "only a new device waiting to be paired can do this")
        return caller.device

    def _pair_start(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        device = self._pending_device(caller)
        name = args.get("name")
        try:
            D.check_device_name(name if isinstance(name, str) else "")
        except FormatError as e:
            raise OpError(ErrorCode.BAD_FRAME, e.message) from e
        assert isinstance(name, str)
        code, expires = D.new_pairing_code(), self.clock() + D.CODE_TTL_MS
        self.store.start_pairing(caller.user_id, D.code_digest(caller.user, code), device.fingerprint,
                                 device.encode(), name, expires)
        return Outcome({"code": code, "expires_ms": expires})

    def _code(self, caller: Caller, args: dict[str, Any]) -> bytes:
        code = args.get("code")
        return D.code_digest(caller.user, code if isinstance(code, str) else "")

    def _pair_lookup(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        self._listed(caller)
        found = self.store.pending(caller.user_id, self._code(caller, args), self.clock())
        return Outcome({"device": PublicIdentity.decode(found.identity).line, "name": found.name,
                        "expires_ms": found.expires_ms})

    def _pair_approve(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        approver = self._listed(caller)
        digest = self._code(caller, args)
        found = self.store.pending(caller.user_id, digest, self.clock())
        dlist, certs, old = self._checked_list(caller, args)
        assert old is not None
        try:
            cert = D.DeviceCert.decode(_need(args, "cert"))
        except IntegrityError as e:
            raise OpError(ErrorCode.DEVICE_LIST, e.message) from e
        if cert.device_id != found.device_id or cert.encode() not in {c.encode() for c in certs}:
            raise OpError(ErrorCode.DEVICE_LIST, "the certificate is not for the device that asked to pair")
        if set(dlist.devices) != set(old.devices) | {found.device_id}:
            raise OpError(ErrorCode.DEVICE_LIST, "the new list must be the current one plus the new device")
        user_key = _need(args, "user_key")
        approver_cert = self.store.cert(approver)
        assert approver_cert is not None
        approval = json.dumps({"cert": cert.encode().hex(), "device_list": dlist.encode().hex(),
                               "approver_cert": approver_cert.hex(), "user_key": user_key.hex()}).encode()
        # The list first: of two approvals racing, the second fails on its counter before it uses the code.
        outcome = self._store_list(caller, dlist, certs, old)
        self.store.approve(caller.user_id, digest, self.clock(), approval)
        outcome.notices.append(Notice(caller.user_id, "paired", {}, found.device_id))
        return outcome

    def _pair_complete(self, caller: Caller, args: dict[str, Any]) -> Outcome:
        if caller.device is None:
            raise OpError(ErrorCode.FORBIDDEN, "only a new device waiting to be paired can do this")
        approval = self.store.approval(caller.device.fingerprint)
        # An approval counts only while it lists the device: one kept from before the device was removed
        # (a server older than this rule kept them) is not handed out again; a new pairing starts (6.4).
        listed = self.store.device_user(caller.device.fingerprint) == caller.user_id
        if approval is None and listed:  # the first device, or one paired long ago: not waiting for anything
            raise OpError(ErrorCode.PAIRING, "this device is already on the account's device list: "
                          "there is no pairing to complete")
        if approval is None or not listed:
            raise OpError(ErrorCode.PAIRING, "this device has not been approved yet")
        return Outcome(json.loads(approval))


# -- a DIRECT or ROOM_KEY carrying an envelope version 2 (6.6, 6.10) ------------------------------------
def check_direct(data: bytes, sender_device: PublicIdentity | None, recipient_devices: set[bytes],
                 window_ms: int, now_ms: int) -> K.Envelope2:
    """The server's checks of one envelope for one device, before it is stored; OpError with the
    code of section 6.10 otherwise. The server cannot decrypt; it checks what it can see."""
    try:
        env = K.parse_v2(data)
    except SecurecommError as e:  # version 1 is refused here, by name
        raise OpError(ErrorCode.INTEGRITY, f"message rejected: {e.message}") from e
    h = env.header
    if h.key_kind == K.IDENTITY:
        raise OpError(ErrorCode.INTEGRITY, "message rejected: sealed to a long-term key, not to a prekey")
    if h.recipient not in recipient_devices:
        raise OpError(ErrorCode.WRONG_RECIPIENT, "message is sealed to a device that is not on the recipient's list")
    if abs(h.timestamp_ms - now_ms) > window_ms:
        raise OpError(ErrorCode.STALE, "message timestamp is outside the server's window")
    if sender_device is None or h.sender != sender_device.fingerprint:
        raise OpError(ErrorCode.FORBIDDEN, "message is not from this session's device")
    try:
        env.verify(sender_device)
    except SecurecommError as e:
        raise OpError(ErrorCode.INTEGRITY, f"message rejected: {e.message}") from e
    return env
