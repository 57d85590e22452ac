"""The asyncio TLS listener: accept, TLS, connection limits, signals; the composition root.

Theory of operation
-------------------
Each TCP connection is accepted in plain mode, then upgraded to TLS
(net/pqtls.py: pyOpenSSL, X25519MLKEM768 first, or with `--tls stdlib` Python's
`start_tls`) so that a failed or stalled handshake is logged with its peer.
Until LOGIN_OK a connection holds a place among strangers (server/admission.py:
in total and per source address) instead of a client slot, and may send only
small frames (wire/frames.py PRELOGIN_MAX_FRAME). The connection's loop is
server/session.py; this module builds the collaborators it is given (store,
commit queue, relay, bus, logins: server/auth.py) and answers SEND (checked by server/intake.py,
queued for group commit, receipt written once the COMMIT holding it returned).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL

from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import OversizedError, StoreUnavailableError, TLSError, UsageError
from securecomm.net.bus import Bus, LocalBus
from securecomm.net.pqtls import server_handshake
from securecomm.net.tcp import UNACKED_SECONDS, watch_peer
from securecomm.server import intake
from securecomm.server.admission import Admission, Ticket
from securecomm.server.auth import Logins, why_session_ends
from securecomm.server.commit_queue import AsyncStore, not_stored
from securecomm.server.config import ServerConfig
from securecomm.server.devicerelay import DeviceRelay
from securecomm.server.files import FileService
from securecomm.server.memory import Trimmer, give_back_large_blocks
from securecomm.server.relay import Relay
from securecomm.server.session import READ_CHUNK, Session, TokenBucket
from securecomm.store.backends import is_url, open_store
from securecomm.store.db import NewMessage, StoredMessage, User, normalise_name
from securecomm.store.quota import MailboxLimits, SendLimits
from securecomm.store.users import user_row
from securecomm.timeutil import now_ms
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.server.metrics import Metrics

log = logging.getLogger("securecomm.server")

#: How often the server reads the database's account change counter. `user
#: remove` / `user passwd` run in another process (the CLI writes the database
#: the server reads) and bump that counter; within this time the server drops
#: the sessions of removed accounts and of keys no longer registered. A counter
#: rather than a signal: the CLI need not know the server's pid or run as its
#: user, and a change made while the server is down is still seen (one SELECT
#: on the read-only connection, a few microseconds).
ACCOUNT_POLL_SECONDS = 0.25
#: A session of a listed device silent this long (a client PINGs after 60 s quiet, then waits 30 s for
#: the PONG) is replaced by a new login of the same device when the account is at its session limit.
QUIET_REPLACED = 90.0
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
    def __init__(self, config: ServerConfig, ssl_ctx: ssl.SSLContext | SSL.Context, identity: PrivateIdentity,
                 db_path: Any, files_dir: Path | None = None, bus: Bus | None = None) -> None:
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
        # Files beside the database: ciphertext only, rows in their own SQLite file (store/files.py).
        # With PostgreSQL, rows and ciphertext in it too (store/pgfiles.py): any relay serves any file.
        url = str(db_path) if is_url(str(db_path)) else None
        self.files = FileService(files_dir or Path(db_path).parent / "files", self._file_recipient,
                                 quota=config.file_quota, max_file=config.max_file, days=config.file_days, db=url,
                                 sender_quota=config.file_sender_quota, devices=self._file_devices)
        self.files.upload_wait = config.file_wait
        # Devices and prekeys (PROTOCOL.md 6): a connection of their own to the same database, either kind.
        self.relay.devices = DeviceRelay(functools.partial(open_store, db_path))
        self.relay.devices.on_removed = self.files.device_removed
        self.sessions: set[Session] = set()
        self.handshaking = 0
        self.admission = Admission(config.max_unauthenticated, config.max_unauthenticated_per_address)
        #: Logged-in sessions: what --max-clients limits.
        self.clients = 0
        self.trimmer = Trimmer()
        self.logins = Logins(config, self.store, self.relay, identity.public.fingerprint, self._admit)
        #: Relay budgets per user id (--relay-rate), shared by its sessions and kept while the server
        #: runs, so that neither more sessions nor reconnecting refills it; one per account that sent.
        self._relay_budgets: dict[int, TokenBucket] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        #: `serve --metrics`: set before start (server/servermetrics.py); None counts nothing.
        self.metrics: Metrics | None = None
        self._expirer: asyncio.Task[None] | None = None
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
        give_back_large_blocks()
        await self.store.open()
        self._server = await asyncio.start_server(self._accept, self.config.host, self.config.port,
                                                  reuse_port=self.config.reuse_port or None,
                                                  limit=READ_CHUNK, backlog=1024)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        if self.config.max_frame < V2_FRAME_FLOOR:  # the attacker's check: --max-frame 4096 broke every send
            log.warning("--max-frame %d is below %d: the answer to a prekey claim takes about 6 KiB per device of "
                        "the recipient, so under about 8 KiB no direct message or file can be sent at all, and "
                        "above it not to users with many devices (refused TOO_LARGE)",
                        self.config.max_frame, V2_FRAME_FLOOR)
        self.logins.restore_locks(self.store.read().list_users())
        self._watcher = asyncio.create_task(self.watch_accounts(), name="securecomm-account-watch")
        self._expirer = asyncio.create_task(self.files.expire_forever(), name="securecomm-file-expiry")
        if self.config.mailbox_ttl > 0:
            from securecomm.server.expiry import MailboxExpiry

            expiry = MailboxExpiry(self.store, self.config.mailbox_ttl, self.relay.expired)
            self._expiry = asyncio.create_task(expiry.run(), name="securecomm-mailbox-expiry")
        return self.address

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
            why = why_session_ends(s, fresh, self.relay.devices.listed if self.relay.devices else None)
            if why is not None:
                self.drop(s, why)
            else:
                s.user = fresh
        self.logins.lift_reset_locks(read.get_user)
        self.files.accounts_changed({u.name for u in read.list_users()})

    def drop(self, s: Session, why: str) -> None:
        log.warning("%s dropped: %s", s.label(), why)
        self.relay.gone(s)
        s.end(P.ErrorCode.AUTH_FAILED, f"logged out: {why}")

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages commit and their receipts go out, close the DB."""
        if self._server is not None:
            self._server.close()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._expirer is not None:
            self._expirer.cancel()
        if self.logins.background:
            await asyncio.wait(self.logins.background, timeout=5)
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
        self.files.close()
        self.logins.close()
        if self.relay.devices is not None:
            self.relay.devices.close()
        close = getattr(self.bus, "close", None)
        if close is not None:
            await close()
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
        # a peer that vanishes without a FIN is noticed in about two minutes (net/tcp.py)
        watch_peer(writer.get_extra_info("socket"), max(UNACKED_SECONDS, 2 * self.config.frame_timeout))
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

    def _too_many_sessions(self, s: Session, user: User, device: bytes | None) -> bool:
        """Refuse (fatally) a login beyond --max-sessions-per-user; True if refused. A listed device's
        login first replaces a session of that same device the server has heard nothing from for
        QUIET_REPLACED seconds: a client PINGs after 60 s quiet, so that one's link is dead or held open
        by someone else (attacker's check: 16 links that died without a FIN locked the account out for
        the whole --idle-timeout, with nothing the user could close). Else a login of a device that
        holds at least two sessions fewer than the device holding the most replaces that one's
        quietest session (password-only and pending sessions count as one device)."""
        online = self.relay.online.get(user.id, set())
        held = len(online)
        limit = self.config.max_sessions_per_user
        if held < limit:
            return False
        now = time.monotonic()
        # a client PINGs after min(60, idle_timeout / 2) s quiet (SERVER_HELLO's idle_timeout): never this quiet
        threshold = min(QUIET_REPLACED, 0.75 * self.config.idle_timeout)
        quiet = [m for m in online if device is not None and m.device is not None and same(m.device, device)
                 and not m.closing and now - m.last_heard >= threshold]
        if quiet:
            old = min(quiet, key=lambda m: m.last_heard)
            log.warning("%s replaces %s: the same device, quiet for %d s, at %s's session limit", s.label(),
                        old.label(), now - old.last_heard, user.name)
            self.relay.gone(old)
            old.end(P.ErrorCode.TOO_MANY_CLIENTS, "replaced by a newer login of this device (this session had "
                    "been quiet too long, at the account's session limit)")
            return False
        # One device must not hold the account's every slot (the attacker's check: a stolen phone, not yet
        # removed, held all 16 with PINGs, and the owner could not log in to remove it): a login of a device
        # with fewer sessions than the one holding the most takes that one's quietest session.
        mine = device or b""  # listed devices by id; password-only and pending sessions as one group
        held_by: dict[bytes, list[Session]] = {}
        for m in online:
            if not m.closing:
                held_by.setdefault(m.device or b"", []).append(m)
        hog = max(held_by, key=lambda g: len(held_by[g]), default=None)
        if hog is not None and hog != mine and len(held_by[hog]) > len(held_by.get(mine, ())) + 1:
            old = min(held_by[hog], key=lambda m: m.last_heard)
            log.warning("%s replaces %s: one device held %d of %s's %d sessions", s.label(), old.label(),
                        len(held_by[hog]), user.name, held)
            self.relay.gone(old)
            old.end(P.ErrorCode.TOO_MANY_CLIENTS, "replaced by a login of another device of this account (this "
                    "device held more than its share of the account's session limit)")
            return False
        log.warning("%s login refused: %s already has %d sessions (the maximum)", s.label(), user.name, held)
        s.error(P.ErrorCode.TOO_MANY_CLIENTS, f"{user.name} already has {limit} sessions logged in (the maximum); "
                "close one, or ask the operator about --max-sessions-per-user", fatal=True)
        return True

    def _admit(self, s: Session, user: User, device: bytes | None = None) -> bool:
        """A login that checked out becomes a client unless a limit says no (refused here, fatally)."""
        if self._full():  # others logged in while this one was checked
            self._refuse_full(s)
            return False
        if self._too_many_sessions(s, user, device):
            return False
        self.clients += 1
        if s.ticket is not None:
            s.ticket.release()  # from now on it counts as a client, not a stranger
        return True

    async def _handshake_and_serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                                   ticket: Ticket) -> None:
        if self.handshaking >= self.config.max_handshakes:
            log.warning("peer=%s dropped: %d handshakes already in progress", peer, self.handshaking)
            writer.transport.abort()
            return
        self.handshaking += 1
        try:
            await server_handshake(writer, self.ssl_ctx, self.config.handshake_timeout)
        except (ssl.SSLError, TLSError, OSError, TimeoutError, ConnectionError) as e:
            log.info("peer=%s dropped: TLS handshake failed: %s", peer, _short(e))
            writer.transport.abort()
            return
        finally:
            self.handshaking -= 1
        session = Session(self.config, self.identity.public.line, self, self.logins, self.relay, reader, writer,
                          peer)
        session.ticket = ticket
        if self._full():  # told at once: it could not log in anyway
            self._refuse_full(session)
            await _close(session)
            return
        self.sessions.add(session)
        log.debug("peer=%s connected, TLS group %s (%d clients)", peer, _tls_group(writer), len(self.sessions))
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
            self.files.closed(session)
            if session.pending:
                await asyncio.wait(session.pending, timeout=10)
            await _close(session)

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
                     env.detail or env.message)
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

    # -- files -----------------------------------------------------------------------
    def _file_recipient(self, name: str) -> str | None:
        """The account name files for `name` are kept under, if that account exists and has a key."""
        try:
            user = self.store.read().get_user(normalise_name(name))
        except UsageError:
            return None
        return user.name if user is not None and user.identity is not None else None

    def _file_devices(self, name: str) -> list[bytes] | None:
        """The listed device ids of account `name` (a file waits for each, PROTOCOL.md 4.4), or None."""
        user = self.store.read().get_user(name)
        if user is None or self.relay.devices is None:
            return None
        return [device for device, *_ in self.relay.devices.ops.store.devices(user.id)] or None

    async def file_put(self, s: Session, ev: P.FilePut) -> None:
        await self.files.put(s, ev)

    # -- requests --------------------------------------------------------------------
    def downloading(self, s: Session) -> bool:
        return self.files.downloading(s)

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
        elif not await self.files.request(s, ev) and not await self.relay.request(s, ev):
            # fatal like an unknown message type: the client speaks a protocol this server does not
            log.warning("%s dropped: unknown request %r", s.label(), ev.op[:40])
            s.error(P.ErrorCode.UNKNOWN_TYPE, P.OPAQUE_TEXTS[P.ErrorCode.UNKNOWN_TYPE], fatal=True, rid=ev.rid)


#: The --max-frame under which serve warns: the answer to a prekey claim for an account with the most
#: devices (10, about 5.8 KiB each) fits in it.
V2_FRAME_FLOOR = 65536


def _tls_group(writer: asyncio.StreamWriter) -> str:
    """The key-exchange group the handshake settled on (the pq transport names it; Python's ssl cannot)."""
    group = getattr(writer.get_extra_info("ssl_object"), "group", None)
    return str(group()) if callable(group) else "unknown (Python's ssl)"


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
