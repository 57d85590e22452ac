"""The asyncio TLS listener: accept, TLS, connection limits, logins, signals; the composition root.

Theory of operation
-------------------
Each TCP connection is accepted in plain mode, then upgraded with
`start_tls` so that a failed or stalled handshake is logged with its peer.
Until LOGIN_OK a connection holds a place among strangers (server/admission.py:
in total and per source address) instead of a client slot, and may send only
small frames (wire/frames.py PRELOGIN_MAX_FRAME). The connection's loop is
server/session.py; this module builds the collaborators it is given (store,
commit queue, relay, bus) and answers logins and SEND (checked by server/intake.py,
queued for group commit, receipt written once the COMMIT holding it returned).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import (
    BusyError,
    ExistsError,
    IntegrityError,
    OversizedError,
    SecurecommError,
    StoreUnavailableError,
    UsageError,
)
from securecomm.net.bus import Bus, LocalBus
from securecomm.server import intake
from securecomm.server.admission import Admission, Ticket
from securecomm.server.auth import (
    NO_ACCOUNT,
    Lockout,
    NameLocks,
    locked_message,
    name_tag,
    same_key,
    shown_fingerprint,
    why_session_ends,
)
from securecomm.server.commit_queue import AsyncStore, not_stored
from securecomm.server.config import ServerConfig
from securecomm.server.memory import Trimmer
from securecomm.server.relay import Relay
from securecomm.server.session import READ_CHUNK, Session, TokenBucket
from securecomm.store import passwords
from securecomm.store.backends import is_url, open_store
from securecomm.store.db import LAST_LOGIN_RESOLUTION, NewMessage, StoredMessage, User, normalise_name
from securecomm.store.quota import MailboxLimits, SendLimits
from securecomm.store.users import user_row
from securecomm.timeutil import now_ms
from securecomm.wire import protocol as P

log = logging.getLogger("securecomm.server")

#: How often the server reads the database's account change counter. `user
#: remove` / `user passwd` run in another process (the CLI writes the database
#: the server reads) and bump that counter; within this time the server drops
#: the sessions of removed accounts and of keys no longer registered. A counter
#: rather than a signal: the CLI need not know the server's pid or run as its
#: user, and a change made while the server is down is still seen (one SELECT
#: on the read-only connection, a few microseconds).
ACCOUNT_POLL_SECONDS = 0.25
#: asyncio's TLS transport gives every connection a 256 KiB receive buffer
#: (sslproto.SSLProtocol.max_size), allocated and zero-filled up front: that
#: alone made an idle connection cost ~290 KiB of RSS. TLS records are at most
#: 16 KiB, so 32 KiB loses nothing; measured in benchmarks/run.py (figure 4).
TLS_READ_BUFFER = 32 * 1024


def _smaller_tls_buffers() -> None:
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class Server:
    def __init__(self, config: ServerConfig, ssl_ctx: ssl.SSLContext, identity: PrivateIdentity,
                 db_path: Any, bus: Bus | None = None) -> None:
        config.validate()
        self.config = config
        self.ssl_ctx = ssl_ctx
        self.identity = identity
        # A DIRECT id is remembered while an envelope with its timestamp could still pass the stale
        # check (stored within one window of its timestamp, accepted within one more); later a
        # replay is STALE without it (PROTOCOL.md 4.2).
        # db_path: a SQLite file, or the PostgreSQL URL that several relays share (store/backends.py)
        writer = functools.partial(open_store, db_path,
                                   mailbox_limits=MailboxLimits(config.mailbox_messages, config.mailbox_bytes),
                                   send_limits=SendLimits(config.send_messages, config.send_bytes))
        self.store = AsyncStore(writer, functools.partial(open_store, db_path, readonly=True),
                                id_lifetime_ms=2 * config.stale_window_ms)
        self.bus = bus if bus is not None else LocalBus()
        self.relay = Relay(config, self.store, self.bus)
        #: What `relay_info` tells a client (`status`): the engines, never where they are.
        self.engines = {"store": "postgresql" if is_url(str(db_path)) else "sqlite", "bus": self.bus.engine}
        self.sessions: set[Session] = set()
        self.handshaking = 0
        self.admission = Admission(config.max_unauthenticated, config.max_unauthenticated_per_address)
        #: Logged-in sessions: what --max-clients limits.
        self.clients = 0
        self.trimmer = Trimmer()
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
        self._background: set[asyncio.Future[Any]] = set()
        #: Relay budgets per user id (--relay-rate), shared by its sessions and kept while the server
        #: runs, so that neither more sessions nor reconnecting refills it; one per account that sent.
        self._relay_budgets: dict[int, TokenBucket] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()
        self.address: tuple[str, int] | None = None

    def relay_budget(self, user_id: int) -> TokenBucket:
        bucket = self._relay_budgets.get(user_id)
        if bucket is None:
            bucket = self._relay_budgets[user_id] = TokenBucket(self.config.relay_rate, self.config.max_frame)
        return bucket

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        _smaller_tls_buffers()
        connect = getattr(self.bus, "connect", None)
        if connect is not None:  # a bus that spans relays: unreachable at start means no serving at all
            await connect()
        await self.store.open()
        self._server = await asyncio.start_server(self._accept, self.config.host, self.config.port,
                                                  reuse_port=self.config.reuse_port or None,
                                                  limit=READ_CHUNK, backlog=1024)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        self._restore_locks()
        self._watcher = asyncio.create_task(self.watch_accounts(), name="securecomm-account-watch")
        return self.address

    def _restore_locks(self) -> None:
        for user in self.store.read().list_users():
            if user.locked():
                self.lockout.lock(user.name, user.locked_until)
                self._lock_hashes[user.name] = user.password_hash

    async def watch_accounts(self) -> None:
        """Poll the account change counter (see ACCOUNT_POLL_SECONDS) and act on a change."""
        seen = self.store.read().account_changes()
        while True:
            await asyncio.sleep(ACCOUNT_POLL_SECONDS)
            try:
                now = self.store.read().account_changes()
                if now != seen:
                    seen = now
                    self.accounts_changed()
            except StoreUnavailableError:
                pass  # a lost PostgreSQL: the store logs the loss and each reconnect, not a traceback a second
            except Exception:  # a busy or broken database must not stop the watch
                log.exception("account watch failed; retrying")

    def accounts_changed(self) -> None:
        """Drop sessions whose account is gone or whose key was replaced; lift locks of reset passwords."""
        read = self.store.read()
        for s in list(self.sessions):
            if s.user is None or s.closing:
                continue
            fresh = read.get_user_by_id(s.user.id)
            why = why_session_ends(s, fresh)
            if why is not None:
                self.drop(s, why)
            else:
                s.user = fresh
        for name in self.lockout.locked_names():
            fresh = read.get_user(name)
            if fresh is not None:
                self._password_reset(fresh)

    def drop(self, s: Session, why: str) -> None:
        log.warning("%s dropped: %s", s.label(), why)
        s.error(P.ErrorCode.AUTH_FAILED, f"logged out: {why}", fatal=True)
        s.closing = True
        self.relay.gone(s)
        s.outbox.flush()
        s.writer.close()

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages commit and their receipts go out, close the DB."""
        if self._server is not None:
            self._server.close()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        for s in list(self.sessions):
            s.closing = True
        pending = [f for s in self.sessions for f in s.pending]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for s in list(self.sessions):
            s.error(P.ErrorCode.SHUTTING_DOWN, "server is shutting down", fatal=True)
            s.outbox.flush()
            s.writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.store.close()
        close = getattr(self.bus, "close", None)
        if close is not None:
            await close()
        self.hash_pool.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
        ticket = self.admission.admit(str(addr[0]))
        if isinstance(ticket, str):
            log.warning("peer=%s dropped: %s", peer, ticket)
            writer.transport.abort()
            return
        try:
            await self._handshake_and_serve(reader, writer, peer, ticket)
        finally:
            ticket.release()
            self.trimmer.connection_closed()

    def _full(self) -> bool:
        return self.clients >= self.config.max_clients

    def _refuse_full(self, session: Session) -> None:
        log.warning("%s refused: %d clients connected (the maximum)", session.label(), self.clients)
        session.error(P.ErrorCode.TOO_MANY_CLIENTS,
                      f"server is full ({self.config.max_clients} clients); try again later", fatal=True)

    def _too_many_sessions(self, s: Session, user: User) -> bool:
        """Refuse (fatally) a login beyond --max-sessions-per-user; True if refused."""
        held = len(self.relay.online.get(user.id, ()))
        limit = self.config.max_sessions_per_user
        if held < limit:
            return False
        log.warning("%s login refused: %s already has %d sessions (the maximum)", s.label(), user.name, held)
        s.error(P.ErrorCode.TOO_MANY_CLIENTS, f"{user.name} already has {limit} sessions logged in (the maximum); "
                "close one, or ask the operator about --max-sessions-per-user", fatal=True)
        return True

    async def _handshake_and_serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                                   ticket: Ticket) -> None:
        if self.handshaking >= self.config.max_handshakes:
            log.warning("peer=%s dropped: %d handshakes already in progress", peer, self.handshaking)
            writer.transport.abort()
            return
        self.handshaking += 1
        try:
            await writer.start_tls(self.ssl_ctx, ssl_handshake_timeout=self.config.handshake_timeout)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as e:
            log.info("peer=%s dropped: TLS handshake failed: %s", peer, _short(e))
            writer.transport.abort()
            return
        finally:
            self.handshaking -= 1
        session = Session(self.config, self.identity.public.line, self, self.relay, reader, writer, peer)
        session.ticket = ticket
        if self._full():  # told at once: it could not log in anyway
            self._refuse_full(session)
            await _close(session)
            return
        self.sessions.add(session)
        log.debug("peer=%s connected (%d clients)", peer, len(self.sessions))
        try:
            await session.run()
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.info("%s connection lost: %s", session.label(), _short(e))
        except StoreUnavailableError as e:  # a login (or lookup) that needs the lost database: retry later
            log.warning("%s closed: %s", session.label(), e.message)
            session.error(P.ErrorCode.UNAVAILABLE, "the relay's database is unreachable; retry shortly", fatal=True)
        except Exception:  # one broken connection must never take the server down
            log.exception("%s internal error", session.label())
            session.error(P.ErrorCode.INTERNAL, "internal server error", fatal=True)
        finally:
            self.sessions.discard(session)
            if session.user is not None:
                self.clients -= 1
            self.relay.gone(session)
            if session.pending:
                await asyncio.wait(session.pending, timeout=10)
            await _close(session)

    # -- login -----------------------------------------------------------------------
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
        if identity is not None and not await self._register(s, user, identity, ev.replace_key):
            return
        checked = user.password_hash
        if passwords.needs_rehash(user.password_hash):
            new_hash = await asyncio.get_running_loop().run_in_executor(self.hash_pool, passwords.hash_password,
                                                                        ev.password)
            # by id and only over the hash just checked: never onto an account made or reset meanwhile
            if await self.store.call(self.store.store.upgrade_password_hash, user.id, checked, new_hash):
                self._rehashed(user.id, checked, new_hash)
                checked = new_hash
        await self._logged_in(s, user, identity, "password", checked)

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
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _proven_identity(self, s: Session, ev: P.LoginPassword) -> PublicIdentity | None:
        """The identity to register, if it is well formed and the client proved it holds its private key."""
        assert ev.identity is not None
        try:
            identity = PublicIdentity.from_line(ev.identity)
        except SecurecommError:
            log.warning("%s registration refused: identity malformed", s.label())
            s.error(P.ErrorCode.BAD_FRAME, "the identity to register is malformed", fatal=True)
            return None
        try:
            if ev.proof is None:
                raise IntegrityError("no proof of possession")
            identity.verify(ev.proof, P.register_transcript(s.challenge, self.identity.public.fingerprint,
                                                            ev.user.lower()))
        except IntegrityError:
            log.warning("%s registration refused: no valid proof of possession", s.label())
            s.error(P.ErrorCode.INTEGRITY, "the proof of possession of the identity to register (a signature of "
                    "this connection's challenge) is missing or does not verify", fatal=True)
            return None
        return identity

    async def _register(self, s: Session, user: User, identity: PublicIdentity, replace: bool) -> bool:
        """Register a proven device key: one account per key, and one key per account unless replacing."""
        fp = identity.fingerprint
        if user.fingerprint is not None and not same(user.fingerprint, fp) and not replace:
            log.info("%s registration held: the account has another key", s.label())
            s.error(P.ErrorCode.KEY_REPLACE, f"{user.name} already has a device key registered "
                    f"({PublicIdentity.decode_cached(user.identity or b'').fingerprint_text}); one device per user: "
                    "replacing it logs the other device out", fatal=True)
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
        identity = PublicIdentity.decode_cached(user.identity) if user and user.identity else None
        transcript = P.login_transcript(s.challenge, self.identity.public.fingerprint, name or "")
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

    async def _logged_in(self, s: Session, user: User, identity: PublicIdentity | None, how: str,
                         password_hash: str | None = None) -> None:
        by_password = how == "password"
        stale = not user.last_login or user.last_login < time.time() - LAST_LOGIN_RESOLUTION
        if stale or (by_password and user.failed_logins):
            await self.store.call(functools.partial(self.store.store.record_login, clear_lock=by_password),
                                  user.id, True)
        # From here to relay.logged_in there is no await: the account read below is the one the
        # session starts with, and any later change bumps the counter the watcher acts on.
        fresh = self._still_as_checked(s, user, identity, password_hash)
        if fresh is None:
            return
        if self._full():  # others logged in while this one was checked
            self._refuse_full(s)
            return
        if self._too_many_sessions(s, fresh):
            return
        s.user, s.identity, s.password_hash = fresh, identity, password_hash
        self.clients += 1
        if s.ticket is not None:
            s.ticket.release()  # from now on it counts as a client, not a stranger
        log.info("%s logged in (%s%s)", s.label(), how, "" if identity else ", no device key: no mail or rooms")
        s.send(P.LoginOk(user.name, user.role, shown_fingerprint(identity, fresh)))
        self.relay.logged_in(s)

    def _still_as_checked(self, s: Session, user: User, identity: PublicIdentity | None,
                          password_hash: str | None) -> User | None:
        """The account as the database has it now, if it is still what this login checked; else refused.

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

    # -- messages --------------------------------------------------------------------
    def handle_send(self, s: Session, ev: P.Send) -> None:
        """Check and open the envelope now (server/intake.py); the receipt follows the commit."""
        msg_id = envelope.peek_msg_id(ev.envelope)  # named even when the envelope does not parse
        parsed = intake.parse(ev.envelope)
        rules = intake.Rules(self.identity.public.fingerprint, self.config.stale_window_ms)
        env = parsed if isinstance(parsed, intake.Refusal) else intake.check(parsed, rules, s.identity, now_ms(),
                                                                             opener=self.identity)
        if isinstance(env, intake.Refusal):
            s.in_flight.release()
            log.info("%s message %s: %s", s.label(), "rejected" if env.code is P.ErrorCode.INTEGRITY else "refused",
                     env.message.removeprefix("message rejected: "))
            s.error(env.code, env.message, msg_id=msg_id)
            return
        assert s.user is not None
        h = env.envelope.header
        fut = self.store.submit(NewMessage(s.user.id, h.msg_id, env.digest, h.timestamp_ms, env.envelope.raw))
        s.track(fut, lambda f: self._receipt(s, f, h.msg_id))

    def _receipt(self, s: Session, fut: asyncio.Future[StoredMessage], msg_id: bytes) -> None:
        if fut.cancelled() or fut.exception() is not None:
            log.error("%s message not stored: %s", s.label(), _short(fut.exception()) if not fut.cancelled() else "")
            s.error(*not_stored(fut), msg_id=msg_id)
            return
        stored = fut.result()
        if stored.refused is not None:
            log.info("%s message refused: %s", s.label(), stored.refused)
            s.error(P.ErrorCode.STORAGE_FULL, f"{stored.refused}; nothing was stored, and nothing already "
                    "stored was dropped", msg_id=msg_id)
            return
        if stored.duplicate:
            log.info("%s duplicate message %s: original receipt sent", s.label(), msg_id.hex())
        with contextlib.suppress(P.ProtocolError):
            s.send(P.Receipt(stored.msg_id, stored.sha256, stored.stored_at_ms, stored.duplicate))

    # -- requests --------------------------------------------------------------------
    async def handle_request(self, s: Session, ev: P.Request) -> None:
        assert s.user is not None
        if ev.op == "relay_info":
            s.send(P.Result(ev.rid, dict(self.engines)))
        elif ev.op == "user_list":
            if s.user.role != "admin":
                log.warning("%s refused user_list: not an admin", s.label())
                s.error(P.ErrorCode.FORBIDDEN, "permission denied: listing users needs the admin role", rid=ev.rid)
                return
            users = self.store.read().list_users()
            try:
                s.send(P.Result(ev.rid, [user_row(u) for u in users]))
            except OversizedError:  # thousands of accounts under a small --max-frame: refused, never INTERNAL
                s.error(P.ErrorCode.TOO_LARGE, "the user list is larger than this server's frame limit "
                        "(use securecomm user list on the server host)", rid=ev.rid)
        elif not await self.relay.request(s, ev):
            # fatal like an unknown message type: the client speaks a protocol this server does not
            s.error(P.ErrorCode.UNKNOWN_TYPE, f"unknown request {ev.op[:40]!r}", fatal=True, rid=ev.rid)


def _short(e: BaseException | None) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


async def _close(s: Session) -> None:
    s.outbox.flush()
    with contextlib.suppress(Exception):
        s.writer.close()
        await asyncio.wait_for(s.writer.wait_closed(), 2)


async def run_server(server: Server, on_listening: Callable[[tuple[str, int]], None]) -> None:
    """Start, report the address, serve until SIGINT/SIGTERM, then shut down cleanly."""
    address = await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    on_listening(address)
    await stop.wait()
    log.info("shutting down: no new connections; finishing in-flight messages")
    await server.stop()
    log.info("stopped")
