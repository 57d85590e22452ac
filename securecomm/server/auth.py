"""Logins: LOGIN_PASSWORD and LOGIN_KEY (`Logins`, with the Argon2id hash pool), the password-guess
lockout per user name (in memory), and when a session's account still holds.

The listener builds one `Logins` and passes it to every session; it is given the store, the relay
and the listener's own admission check (its client limits), never the whole server.

Theory of operation
-------------------
Only PASSWORD logins are ever locked: an identity-key login proves possession
of an enrolled device's key, which no number of password guesses weakens, so
a stranger who knows a name cannot lock its owner out of their devices.

For each name (known or not: both are treated alike, so neither the answer
nor its timing tells whether an account exists) the tracker keeps the wrong
passwords seen in the current window:

    (no entry) --wrong--> counting(n, window start)
    counting   --wrong, n+1 = lock_after--> locked(until = now + lock_seconds)
    counting   --window over--> (no entry)          the counter starts again
    locked     --until passed--> (no entry)         the counter starts again
    any        --right password--> (no entry)

While a name is locked, password logins are refused at once: they are not
counted, cost no hash and do not move the lock's end, so one guess every few
minutes cannot keep an account locked forever.

`NameLocks` serialises check -> hash -> record per name, so that however
many guesses arrive at once, at most `lock_after` passwords are tested per
window. Nothing is written to disk on a failure (a durable write only for
real accounts would time-leak which names exist); the server mirrors a lock
into the database off the reply path so that `user list` can show it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from securecomm.crypto.identity import PublicIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import BusyError, ExistsError, IntegrityError, SecurecommError, UsageError
from securecomm.server.deviceops import DEVICE_REMOVED_TEXT
from securecomm.store import passwords
from securecomm.store.db import LAST_LOGIN_RESOLUTION, normalise_name
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.server.commit_queue import AsyncStore
    from securecomm.server.config import ServerConfig
    from securecomm.server.relay import Relay
    from securecomm.server.session import Session
    from securecomm.store.db import User

log = logging.getLogger("securecomm.server")

#: Names tracked at once (~250 bytes each). Beyond this the oldest windows are
#: dropped: memory stays bounded whatever names are guessed. Expired entries
#: are dropped when their name is next looked at.
MAX_TRACKED_NAMES = 100_000
#: Live locks moved to the back per eviction instead of being dropped: to
#: evict a lock, a flood of new names must outnumber the table within its
#: 15 minutes (each costs a hash, ~100/s at most), and eviction stays O(1).
MAX_SPARED = 8


@dataclass
class _Entry:
    failures: int
    window_start: float
    locked_until: float = 0.0


class Lockout:
    def __init__(self, lock_after: int, lock_seconds: float, clock: Callable[[], float] = time.time,
                 max_names: int = MAX_TRACKED_NAMES) -> None:
        self.lock_after, self.lock_seconds, self.clock = lock_after, lock_seconds, clock
        self.max_names = max_names
        self._entries: dict[str, _Entry] = {}

    def locked_until(self, name: str) -> float | None:
        """The lock's end (epoch seconds) if password logins for `name` are locked now."""
        entry = self._current(name)
        return entry.locked_until if entry is not None and entry.locked_until else None

    def failed(self, name: str) -> float | None:
        """Count a wrong password; returns the lock's end if this failure started a lock."""
        now = self.clock()
        entry = self._current(name)
        if entry is None:
            self._make_room()
            entry = self._entries[name] = _Entry(0, now)
        if entry.locked_until:  # failures while locked are not counted (callers do not get here)
            return None
        entry.failures += 1
        if entry.failures >= self.lock_after:
            entry.locked_until = now + self.lock_seconds
            return entry.locked_until
        return None

    def succeeded(self, name: str) -> None:
        self._entries.pop(name, None)

    def lock(self, name: str, until: float) -> None:
        """Restore a lock (from the database, at start-up)."""
        if until > self.clock():
            self._entries[name] = _Entry(self.lock_after, until - self.lock_seconds, until)

    def clear(self, name: str) -> None:
        """An operator reset the password (`user passwd`): forget the failures."""
        self._entries.pop(name, None)

    def locked_names(self) -> list[str]:
        return [name for name in list(self._entries) if self.locked_until(name) is not None]

    def _current(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        now = self.clock()
        expired = entry.locked_until <= now if entry.locked_until else entry.window_start + self.lock_seconds <= now
        if expired:
            del self._entries[name]
            return None
        return entry

    def _make_room(self) -> None:
        """Evict the oldest windows (dicts keep insertion order: O(1)), sparing a few live locks."""
        spared = 0
        while len(self._entries) >= self.max_names:
            name = next(iter(self._entries))
            entry = self._entries.pop(name)
            if entry.locked_until > self.clock() and spared < MAX_SPARED:
                self._entries[name] = entry  # a live lock goes to the back of the queue instead
                spared += 1


class NameLocks:
    """One asyncio.Lock per name while someone holds or waits for it (no unbounded growth)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]

    def __len__(self) -> int:
        return len(self._locks)


#: The "password hash" a lock records for a name that had no account when it was locked: never
#: a real hash (those are PHC strings, "$argon2id$..."), so any account made later differs.
NO_ACCOUNT = "none"


def name_tag(key: bytes, name: str) -> str:
    """8 hex characters of HMAC-SHA256(key, name): the same name gives the same tag within one key."""
    return hmac.new(key, name.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:8]


def locked_message(until: float) -> str:
    """The answer to a locked password login: the same for every name, known or not."""
    import datetime as dt

    when = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"authentication failed: password logins for this user name are locked until {when} after too many "
            "wrong passwords (identity-key logins of enrolled devices still work; an operator can reset the "
            "password with: securecomm user passwd NAME --keep-key, which keeps the account's devices and mail)")


def shown_fingerprint(identity: PublicIdentity | None, account: User) -> str | None:
    """LOGIN_OK's fingerprint: the proven key, else (informational only) the account's registered key."""
    if identity is not None:
        return identity.fingerprint_text
    return PublicIdentity.decode_cached(account.identity).fingerprint_text if account.identity else None


def why_session_ends(s: Session, fresh: User | None,
                     listed: Callable[[int, bytes], bool] | None = None) -> str | None:
    """Why a logged-in session must end after an account change, or None if it may stay.

    A session with a proven key ends when that key is no longer the account's; one that
    authenticated with a password ends when the password changes (`user passwd`, even
    with --keep-key: whoever knew the old password must not stay in)."""
    if fresh is None:
        return "the account was removed"
    if s.device is not None and listed is not None and not listed(fresh.id, s.device):
        return "this device's key is no longer registered"
    # a listed device (or one waiting to be paired) is not the account's one registered key: its
    # list decides (a removal closes its sessions at once, server/devicerelay.py)
    if s.identity is not None and s.device is None and not s.awaiting_pairing \
            and not same_key(fresh.fingerprint, s.identity.fingerprint):
        return "this device's key is no longer registered"
    if s.password_hash is not None and not same(fresh.password_hash.encode(), s.password_hash.encode()):
        return "the account's password changed"
    return None


def _signer(identities: list[bytes], signature: bytes, transcript: bytes) -> PublicIdentity | None:
    """The identity (binary form) among `identities` whose key made `signature`, if any."""
    for raw in identities:
        identity = PublicIdentity.decode_cached(raw)
        try:
            identity.verify(signature, transcript)
        except IntegrityError:
            continue
        return identity
    return None


def same_key(a: bytes | None, b: bytes | None) -> bool:
    """Two fingerprints, either of which may be "no key", are the same."""
    return (a is None and b is None) or (a is not None and b is not None and same(a, b))


class Logins:
    """Answers LOGIN_PASSWORD and LOGIN_KEY: the hash pool, the lockout, key registration, LOGIN_OK.

    `admit(session, account, device)` is the listener's last word (its client limits): it refuses the
    session itself (returning False) or counts it as a client (True). `device`: the listed device the
    login proved, or None."""

    def __init__(self, config: ServerConfig, store: AsyncStore, relay: Relay, server_fingerprint: bytes,
                 admit: Callable[[Session, User, bytes | None], bool]) -> None:
        self.config, self.store, self.relay = config, store, relay
        self.server_fingerprint, self.admit = server_fingerprint, admit
        self.hash_pool = ThreadPoolExecutor(max_workers=config.hash_workers, thread_name_prefix="securecomm-argon2")
        self.hash_slots = asyncio.Semaphore(config.hash_workers)
        self.hash_waiting = 0
        self._dummy_hash = passwords.dummy_hash()
        self.lockout = Lockout(config.lock_after, config.lock_seconds)
        self.name_locks = NameLocks()
        #: password hash of each locked account when its lock started: a new one (`user passwd`) lifts the lock
        self._lock_hashes: dict[str, str] = {}
        #: Keys the tags under which unknown login names are logged (_logged_name); never stored.
        self._name_key = os.urandom(32)
        #: Lock mirrors still being written (stop() waits for them).
        self.background: set[asyncio.Future[Any]] = set()

    def restore_locks(self, users: list[User]) -> None:
        """At start-up: the locks the database holds."""
        for user in users:
            if user.locked():
                self.lockout.lock(user.name, user.locked_until)
                self._lock_hashes[user.name] = user.password_hash

    def lift_reset_locks(self, get_user: Callable[[str], User | None]) -> None:
        """After an account change: lift the locks of names whose password an operator reset."""
        for name in self.lockout.locked_names():
            fresh = get_user(name)
            if fresh is not None:
                self._password_reset(fresh)

    def close(self) -> None:
        self.hash_pool.shutdown(wait=False, cancel_futures=True)

    async def _check_password(self, password: str, phc: str) -> bool:
        if self.hash_waiting >= self.config.max_hash_queue:
            raise BusyError
        self.hash_waiting += 1
        try:
            async with self.hash_slots:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.hash_pool, passwords.verify_password, password, phc)
        finally:
            self.hash_waiting -= 1

    async def _find_user(self, name: str) -> tuple[str | None, User | None]:
        """The normalised name (None if invalid) and the account (None if unknown)."""
        try:
            norm = normalise_name(name)
        except UsageError:
            return None, None
        return norm, self.store.read().get_user(norm)

    async def login_password(self, s: Session, ev: P.LoginPassword) -> None:
        identity = self._proven_identity(s, ev) if ev.identity else None
        if ev.identity and identity is None:
            return
        name, user = await self._find_user(ev.user)
        key = name or ev.user[:64]  # invalid names are tracked like any other: same answers, same time
        log.debug("%s password login for %s: account read, checking the password", s.label(),
                  self._logged_name(key, user))
        try:
            ok = await self._guarded_check(s, key, user, ev.password)
        except BusyError:
            log.warning("%s login refused: too many logins waiting", s.label())
            s.error(P.ErrorCode.BUSY, "server busy; try again shortly", fatal=True)
            return
        if not ok or user is None:
            return
        device, pending, registered = None, False, identity is not None
        if identity is not None:
            status = self._device_status(user, identity)
            # while version 1 is served, --replace-key still makes a listed device's key (or, for an account
            # without a user key, this key) the account's version-1 key
            legacy = ev.replace_key and self.config.serve_version_1
            if status == "listed":
                device = identity.fingerprint
                registered = legacy
            elif status == "pending":
                # 6.4: only pairing until a listed device approves it, --replace-key or not. (It once made an
                # unapproved key the version-1 key: the password alone then read mail and joined rooms as
                # the user, and contacts saw CHANGED; found by the new-user check.)
                pending, registered = True, False
            if registered and not await self._register(s, user, identity, ev.replace_key):
                return
        checked = user.password_hash
        if passwords.needs_rehash(user.password_hash):
            new_hash = await asyncio.get_running_loop().run_in_executor(self.hash_pool, passwords.hash_password,
                                                                        ev.password)
            # by id and only over the hash just checked: never onto an account made or reset meanwhile
            if await self.store.call(self.store.store.upgrade_password_hash, user.id, checked, new_hash):
                self._rehashed(user.id, checked, new_hash)
                checked = new_hash
        await self._logged_in(s, user, identity, "password", checked, device=device, pending=pending,
                              registered=registered)

    def _device_status(self, user: User, identity: PublicIdentity) -> str | None:
        """For an account with a user key (docs/PROTOCOL.md 6.4): "listed" if the list names this
        device, else "pending" (a new device waiting to be paired). None: an account without a user
        key (a version-1 home, or a first device before its list), which keeps one registered key."""
        devices = self.relay.devices
        if devices is None or not devices.has_user_key(user.id):
            return None
        return "listed" if devices.listed(user.id, identity.fingerprint) else "pending"

    def _logged_name(self, name: str, user: User | None) -> str:
        """How a login's user name appears in the log: an account's name as is; any other only as a tag.

        People type passwords into the name field; an unknown name is written only as a keyed hash
        (per process, so it cannot be reversed by hashing guesses offline) that still lets repeated
        attempts with the same name be correlated within one run."""
        if user is not None:
            return repr(user.name)
        return "unknown name #" + name_tag(self._name_key, name)

    def _rehashed(self, user_id: int, old: str, new: str) -> None:
        """The same password, hashed anew: sessions that checked the old hash are not "password changed"."""
        for other in self.relay.online.get(user_id, ()):
            if other.password_hash == old:
                other.password_hash = new

    async def _guarded_check(self, s: Session, key: str, user: User | None, password: str) -> bool:
        """Check -> hash -> record, one at a time per name (see server/auth.py); the error is sent here."""
        async with self.name_locks.hold(key):
            until = self.lockout.locked_until(key)
            if until is not None and user is not None and self._password_reset(user):
                until = None
            if until is not None:  # not counted, no hash, the lock's end does not move
                log.warning("%s password login refused for %s: locked", s.label(), self._logged_name(key, user))
                s.error(P.ErrorCode.AUTH_FAILED, locked_message(until), fatal=True)
                return False
            ok = await self._check_password(password, user.password_hash if user else self._dummy_hash)
            if ok and user is not None:
                self.lockout.succeeded(key)
                return True
            started = self.lockout.failed(key)
        log.warning("%s login failed for %s: %s", s.label(), self._logged_name(key, user),
                    "unknown user" if user is None else
                    "wrong password" + ("; password logins locked" if started else ""))
        # the same answer for every cause, so that names cannot be enumerated
        s.error(P.ErrorCode.AUTH_FAILED, "authentication failed: wrong user name or password", fatal=True)
        if started is not None and user is not None:
            self._mirror_lock(user, started)
        return False

    def _password_reset(self, user: User) -> bool:
        """True (and the lock lifted) if an operator set a new password since the lock started.

        A lock taken while the name had no account has no recorded hash: it counts as taken over
        NO_ACCOUNT, so the account made since (`user add`) lifts it. Otherwise a stranger could
        lock a name before the operator creates it, and neither `user add` nor `user passwd`
        (which compared the new hash with itself) would lift it."""
        if user.password_hash == self._lock_hashes.get(user.name, NO_ACCOUNT):
            return False
        log.info("user=%s password reset: lock lifted", user.name)
        self.lockout.clear(user.name)
        self._lock_hashes.pop(user.name, None)
        return True

    def _mirror_lock(self, user: User, until: float) -> None:
        """Write a new lock to the database after the answer went out (no timing difference on the wire)."""
        self._lock_hashes[user.name] = user.password_hash
        task = asyncio.ensure_future(self.store.call(self.store.store.set_lock, user.id, self.config.lock_after,
                                                     int(until)))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _proven_identity(self, s: Session, ev: P.LoginPassword) -> PublicIdentity | None:
        """The identity to register, if it is well formed and the client proved it holds its private key."""
        assert ev.identity is not None
        try:
            identity = PublicIdentity.from_line(ev.identity)
        except SecurecommError:
            log.warning("%s registration refused: identity malformed", s.label())
            s.error(P.ErrorCode.BAD_FRAME, P.OPAQUE_TEXTS[P.ErrorCode.BAD_FRAME], fatal=True)
            return None
        try:
            if ev.proof is None:
                raise IntegrityError("no proof of possession")
            identity.verify(ev.proof, P.register_transcript(s.challenge, self.server_fingerprint,
                                                            ev.user.lower()))
        except IntegrityError:
            log.warning("%s registration refused: no valid proof of possession", s.label())
            s.error(P.ErrorCode.INTEGRITY, P.OPAQUE_TEXTS[P.ErrorCode.INTEGRITY], fatal=True)
            return None
        return identity

    async def _register(self, s: Session, user: User, identity: PublicIdentity, replace: bool) -> bool:
        """Register a proven device key: one account per key, and one key per account unless replacing."""
        fp = identity.fingerprint
        if user.fingerprint is not None and not same(user.fingerprint, fp) and not replace:
            log.info("%s registration held: the account has another key", s.label())
            # not "one device per user" (the attacker's check, stop 26): an account gets more devices by pairing
            s.error(P.ErrorCode.KEY_REPLACE, f"{user.name} already has a device key registered "
                    f"({PublicIdentity.decode_cached(user.identity or b'').fingerprint_text}) and no device list "
                    "yet: replacing it logs that device out", fatal=True)
            return False
        if user.fingerprint is not None and same(user.fingerprint, fp):
            return True
        try:
            await self.store.call(self.store.store.set_identity, user.id, identity.encode(), fp)
        except ExistsError:
            log.warning("%s registration refused: key registered to another account", s.label())
            s.error(P.ErrorCode.FORBIDDEN, "this device key is already registered to another account; "
                    "use another identity (securecomm user login NAME --identity NEW)", fatal=True)
            return False
        return True

    async def login_key(self, s: Session, ev: P.LoginKey) -> None:
        name, user = await self._find_user(ev.user)
        transcript = P.login_transcript(s.challenge, self.server_fingerprint, name or "")
        devices = self.relay.devices
        if user is not None and devices is not None and devices.has_user_key(user.id):
            await self._device_key_login(s, user, ev, transcript)
            return
        identity = PublicIdentity.decode_cached(user.identity) if user and user.identity else None
        ok = False
        # never refused for password guesses: a lock must not shut an enrolled device out (server/auth.py)
        if identity is not None and user is not None:
            try:
                identity.verify(ev.signature, transcript)
                ok = True
            except IntegrityError:
                ok = False
        if not ok or user is None:
            log.warning("%s key login failed for %s", s.label(), self._logged_name(name or ev.user, user))
            s.error(P.ErrorCode.AUTH_FAILED, "authentication failed: unknown user or key not registered "
                    "(log in with a password first: securecomm user login)", fatal=True)
            return
        await self._logged_in(s, user, identity, "identity key")

    async def _device_key_login(self, s: Session, user: User, ev: P.LoginKey, transcript: bytes) -> None:
        """LOGIN_KEY to an account with a user key: any device its current list names (6.7); a device
        removed from it is told so (DEVICE_REMOVED, fatal), any other key is AUTH_FAILED as always."""
        devices = self.relay.devices
        assert devices is not None
        device = _signer(devices.identities(user.id), ev.signature, transcript)
        if device is None:
            legacy = [user.identity] if user.identity is not None and self.config.serve_version_1 else []
            if _signer(devices.removed_identities(user.id), ev.signature, transcript) is not None:
                log.warning("%s key login refused: a device removed from %s's list", s.label(), user.name)
                s.error(P.ErrorCode.DEVICE_REMOVED, DEVICE_REMOVED_TEXT + "; to use it again, pair it again "
                        "(securecomm user login, then devices approve on another device)",
                        fatal=True)
                return
            registered = _signer(legacy, ev.signature, transcript)
            if registered is not None:  # the account's version-1 key, while version 1 is served (versions.py)
                await self._logged_in(s, user, registered, "identity key")
                return
            log.warning("%s key login failed for %s", s.label(), self._logged_name(user.name, user))
            s.error(P.ErrorCode.AUTH_FAILED, "authentication failed: unknown user or key not registered "
                    "(log in with a password first: securecomm user login)", fatal=True)
            return
        await self._logged_in(s, user, device, "identity key", device=device.fingerprint, registered=False)

    async def _logged_in(self, s: Session, user: User, identity: PublicIdentity | None, how: str,
                         password_hash: str | None = None, *, device: bytes | None = None,
                         pending: bool = False, registered: bool = True) -> None:
        """`registered`: `identity` is (now) the account's one registered key, as the login checked;
        False for a listed or pending device, whose list (not that key) decides."""
        by_password = how == "password"
        stale = not user.last_login or user.last_login < time.time() - LAST_LOGIN_RESOLUTION
        if stale or (by_password and user.failed_logins):
            await self.store.call(functools.partial(self.store.store.record_login, clear_lock=by_password),
                                  user.id, True)
        # From here to relay.logged_in there is no await: the account read below is the one the
        # session starts with, and any later change bumps the counter the watcher acts on.
        fresh = self._still_as_checked(s, user, identity if registered else None, password_hash)
        if fresh is None:
            return
        if device is not None and self.relay.devices is not None and not self.relay.devices.listed(user.id, device):
            # removed while this login awaited the store: its device_removed NOTICE went before it was online
            log.warning("%s key login refused: a device removed from %s's list", s.label(), user.name)
            s.error(P.ErrorCode.DEVICE_REMOVED, DEVICE_REMOVED_TEXT, fatal=True)
            return
        if not self.admit(s, fresh, device):  # the listener's limits: --max-clients, --max-sessions-per-user
            return
        s.user, s.identity, s.password_hash = fresh, identity, password_hash
        s.device, s.awaiting_pairing = device, pending
        log.info("%s logged in (%s%s)", s.label(), how, "" if identity else ", no device key: no mail or rooms")
        prekeys = None if identity is None or self.relay.devices is None else \
            self.relay.devices.prekeys(identity.fingerprint)
        s.send(P.LoginOk(user.name, user.role, shown_fingerprint(identity, fresh), prekeys,
                         device.hex() if device is not None else None, pending))
        self.relay.logged_in(s)

    def _still_as_checked(self, s: Session, user: User, identity: PublicIdentity | None,
                          password_hash: str | None) -> User | None:
        """The account as the database has it now, if it is still what this login checked; else refused.
        (`identity`: the key this login registered as the account's one key; None for a listed or
        pending device, whose list, not the account's registered key, decides.)

        A login awaits (the Argon2 queue, the writer thread) after it read the account, and the
        account watcher skips sessions that are not logged in yet: a removal, a replaced key or a
        new password committed meanwhile would otherwise never reach this session."""
        fresh = self.store.read().get_user_by_id(user.id)
        expected = identity.fingerprint if identity is not None else user.fingerprint
        why = None
        if fresh is None:
            why = "the account was removed"
        elif not same_key(fresh.fingerprint, expected):
            why = "the account's device key changed"
        elif password_hash is not None and not same(fresh.password_hash.encode(), password_hash.encode()):
            why = "the account's password changed"
        if why is None:
            return fresh
        log.warning("%s login refused: %s while it was checked", s.label(), why)
        s.error(P.ErrorCode.AUTH_FAILED, f"authentication failed: {why} while this login was checked; "
                "log in again", fatal=True)
        return None
