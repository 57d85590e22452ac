"""Login rules: password-guess lockout per user name (in memory), and when a session's account still holds.

The login flow itself (the Argon2id hash pool, LOGIN_PASSWORD / LOGIN_KEY) is in server/listener.py.

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
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from securecomm.crypto.identity import PublicIdentity
from securecomm.crypto.integrity import same

if TYPE_CHECKING:
    from securecomm.server.session import Session
    from securecomm.store.db import User

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
            "password with: securecomm user passwd)")


def shown_fingerprint(identity: PublicIdentity | None, account: User) -> str | None:
    """LOGIN_OK's fingerprint: the proven key, else (informational only) the account's registered key."""
    if identity is not None:
        return identity.fingerprint_text
    return PublicIdentity.decode_cached(account.identity).fingerprint_text if account.identity else None


def why_session_ends(s: Session, fresh: User | None) -> str | None:
    """Why a logged-in session must end after an account change, or None if it may stay.

    A session with a proven key ends when that key is no longer the account's; one that
    authenticated with a password ends when the password changes (`user passwd`, even
    with --keep-key: whoever knew the old password must not stay in)."""
    if fresh is None:
        return "the account was removed"
    if s.identity is not None and not same_key(fresh.fingerprint, s.identity.fingerprint):
        return "this device's key is no longer registered"
    if s.password_hash is not None and not same(fresh.password_hash.encode(), s.password_hash.encode()):
        return "the account's password changed"
    return None


def same_key(a: bytes | None, b: bytes | None) -> bool:
    """Two fingerprints, either of which may be "no key", are the same."""
    return (a is None and b is None) or (a is not None and b is not None and same(a, b))
