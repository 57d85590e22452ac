"""The asyncio client: TLS with the chosen trust anchor, then securecomm.wire.

One reader task takes frames off the connection and resolves futures:
receipts by message id, results by request id. So many messages can be in
flight on one connection (pipelining), and each reply finds its sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from securecomm.client.events import printable
from securecomm.client.trust import Trust, changed_error
from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import (
    AuthError,
    DeviceRemovedError,
    DowngradeError,
    FilePermissionError,
    IntegrityError,
    KeyReplaceError,
    NetworkError,
    NotFoundError,
    NotListedError,
    OversizedError,
    PairingError,
    RefusedError,
    SecurecommError,
    SessionLimitError,
    SessionReplacedError,
    ShuttingDownError,
    StoreUnavailableError,
    TLSError,
    TooLargeError,
)
from securecomm.net import tls
from securecomm.net.pqtls import CertificateError, client_connect
from securecomm.wire import protocol as P
from securecomm.wire.files import FileData
from securecomm.wire.relayed import relayed_size

log = logging.getLogger("securecomm.client")

CONNECT_TIMEOUT = 10.0
REPLY_TIMEOUT = 30.0
#: A logged-in client that has sent nothing for this long sends a PING (PROTOCOL.md 3.7), or for half
#: the server's announced idle_timeout if that is shorter: the server's --idle-timeout (300 s by default)
#: then never ends a chat or an `inbox --follow` that is only waiting (before: a "timeout: idle" warning
#: and a reconnect every five quiet minutes), and no PONG within REPLY_TIMEOUT means the server or the
#: link is gone (a server that vanished without a FIN was waited on for ever).
KEEPALIVE_SECONDS = 60.0

_ERRORS: dict[int, type[SecurecommError]] = {
    P.ErrorCode.AUTH_FAILED: AuthError,
    P.ErrorCode.FORBIDDEN: FilePermissionError,
    P.ErrorCode.INTEGRITY: IntegrityError,
    P.ErrorCode.NOT_FOUND: NotFoundError,
    P.ErrorCode.TIMEOUT: NetworkError,
    P.ErrorCode.INTERNAL: SecurecommError,
    P.ErrorCode.SHUTTING_DOWN: ShuttingDownError,  # retryable: client/sending.py resends, chat reconnects
    P.ErrorCode.KEY_REPLACE: KeyReplaceError,
    P.ErrorCode.TOO_MANY_CLIENTS: SessionLimitError,  # a refusal (exit 9); chat and follow tell it apart
    P.ErrorCode.UNAVAILABLE: StoreUnavailableError,  # retryable (a NetworkError): client/sending.py resends once
    P.ErrorCode.PREKEY: IntegrityError,  # docs/PROTOCOL.md 6.9
    P.ErrorCode.DEVICE_LIST: IntegrityError,
    P.ErrorCode.DEVICE_REMOVED: DeviceRemovedError,
    P.ErrorCode.PAIRING: PairingError,  # a refusal (exit 9) that `user login` tells apart: not approved yet
    P.ErrorCode.WRONG_RECIPIENT: NotListedError,  # a refusal (exit 9) as before; the Messenger tells it apart
}


#: What the user can do about a refusal, where there is one obvious thing.
_HINTS: dict[int, str] = {
    P.ErrorCode.MAILBOX_FULL: "send it again once they have read their waiting messages (securecomm inbox)",
    P.ErrorCode.STORAGE_FULL: "the server keeps messages sent to it for good; its operator can raise the limit "
                              "(securecomm serve --send-messages / --send-bytes)",
}


def _log_notice(text: str) -> None:
    log.warning("securecomm: warning: %s", text)


def message_too_large(limit: int, what: str = "message", size: int | None = None,
                      hint: str | None = None) -> TooLargeError:
    """A size limit is a refusal (exit 9), not an integrity failure; the hint names the limit."""
    shown = f" ({size} bytes)" if size is not None else ""
    return TooLargeError(f"{what}{shown} is larger than the limit of {limit} bytes; nothing was sent",
                         hint=hint or f"send at most {limit} bytes at a time: split a larger file "
                                      f"(split -b {max(1, limit // 1024 - 1)}k FILE part.) and send each part")


def error_from(ev: P.Error) -> SecurecommError:
    cls = _ERRORS.get(ev.code, RefusedError)
    opaque = P.OPAQUE_TEXTS.get(ev.code)
    # an opaque code shows its fixed text (PROTOCOL.md 5.5.1); a server's words never drive the terminal
    text = opaque if opaque is not None else printable(ev.message.encode())
    hint = _HINTS.get(ev.code)
    if ev.code == P.ErrorCode.STORAGE_FULL and ev.rid is not None:
        # a file_offer (requests have a rid), not a SEND: the recipient's room has its hint; the sender's own
        # uploads or quota have none but their own words (the attacker's check, and the re-check: the SEND
        # hint about --send-messages was shown there)
        hint = ("they can fetch or wait out the files already waiting for them; the server's operator can raise "
                "the limit (securecomm serve --file-quota)") if "file storage is full" in text else None
    return cls(f"server: {text}", hint=hint)



class EventQueue(asyncio.Queue):
    """Client.events: the frames nobody asked for (pushes, file data) for whoever consumes them.

    The FILE_DATA bytes waiting are counted: at FILE_HIGH the read loop stops reading until a consumer
    has taken them down to FILE_LOW, so the socket's own flow control holds the server back. Before,
    the read loop went on decoding faster than a download's consumer took the chunks: a 300 MiB fetch
    peaked at 240 MB of memory, all of it file data waiting here (the new-user check). Other frames
    are not counted: a command that consumes no pushes must still read its answers.
    """

    FILE_HIGH = 4 * 1024 * 1024
    FILE_LOW = 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.file_bytes = 0
        self.room = asyncio.Event()
        self.room.set()

    def _put(self, item: Any) -> None:
        super()._put(item)
        if isinstance(item, FileData):
            self.file_bytes += len(item.data)
            if self.file_bytes >= self.FILE_HIGH:
                self.room.clear()

    def _get(self) -> Any:
        item = super()._get()
        if isinstance(item, FileData):
            self.file_bytes -= len(item.data)
            if self.file_bytes <= self.FILE_LOW:
                self.room.set()
        return item


#: What to do about a DowngradeError: nothing here is the user's to fix.
DOWNGRADE_HINT = ("do not use this server; tell its operator (a securecomm server always answers version 2 "
                  "with devices)")


class Client:
    #: The protocol versions offered in HELLO; a benchmark's version-1 baseline sets (1,) on the class.
    versions: tuple[int, ...] = P.CLIENT_VERSIONS

    def __init__(self, host: str, port: int, trust: Trust, *, pin: str | None = None) -> None:
        self.host, self.port, self.trust, self.pin = host, port, trust, pin
        self.conn = P.Connection("client")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server_hello: P.ServerHello | None = None
        self.server_identity: PublicIdentity | None = None
        self.login: P.LoginOk | None = None
        #: Largest frame the server accepts (from SERVER_HELLO): bigger ones are refused here, unsent.
        self.max_send = P.MAX_FRAME_SIZE
        self._waiters: dict[Any, asyncio.Future[Any]] = {}
        self._next_rid = 1
        self._reader_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_write = time.monotonic()
        self._closed_error: SecurecommError | None = None
        self._hello_waiter: asyncio.Future[Any] | None = None
        #: Unsolicited events (deliveries, room traffic) for a Messenger to consume.
        self.events: EventQueue = EventQueue()
        #: Where an unsolicited non-fatal ERROR is told (already escaped); a Messenger shows it instead.
        self.notice: Callable[[str], None] = _log_notice

    # -- connection --------------------------------------------------------------------
    async def connect(self, timeout: float = CONNECT_TIMEOUT) -> P.ServerHello:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                client_connect(self.host, self.port, self.trust.context, timeout=timeout), timeout)
        except (ssl.SSLCertVerificationError, CertificateError) as e:
            raise self._verification_error(e) from e
        except ssl.SSLError as e:
            raise TLSError(f"TLS handshake with {self.host}:{self.port} failed: {e.reason or e}") from e
        except TLSError as e:  # the pq transport's handshake failures (net/pqtls.py)
            raise TLSError(f"TLS handshake with {self.host}:{self.port} failed: {e}") from e
        except (OSError, TimeoutError) as e:
            raise NetworkError(f"cannot connect to {self.host}:{self.port}: {e.strerror or str(e) or 'timed out'}",
                               hint="is `securecomm serve` running there?") from e
        self._check_pin()
        self._reader_task = asyncio.create_task(self._read_loop())
        self._hello_waiter = asyncio.get_running_loop().create_future()
        self._write(P.Hello(versions=self.versions))
        hello = await self._wait(self._hello_waiter)
        assert isinstance(hello, P.ServerHello)
        if hello.version not in self.versions:
            raise DowngradeError(f"{self.host}:{self.port} answered protocol version {hello.version}, which this "
                                 f"client did not offer (it speaks {', '.join(map(str, self.versions))}): refused; "
                                 "a server, or anyone between, that picks an older version could read and forge "
                                 "messages", hint=DOWNGRADE_HINT)
        self.server_hello = hello
        self.max_send = hello.max_frame
        try:
            self.server_identity = PublicIdentity.from_line_cached(hello.identity)
        except SecurecommError as e:
            raise IntegrityError("the server sent a malformed identity",
                                 hint="this is not a securecomm server, or a broken one") from e
        self.trust.verified()  # verified chain + hostname, and a securecomm server answered
        return hello

    def _verification_error(self, e: ssl.SSLCertVerificationError | CertificateError) -> TLSError:
        if self.trust.how == "known_servers":
            return changed_error(f"{self.host}:{self.port}", self.trust.anchor_fingerprint)
        return TLSError(f"the certificate of {self.host}:{self.port} is not trusted: {e.verify_message}",
                        hint="pass --ca FILE with the server's CA, or --pin SHA256:... with its fingerprint")

    def _check_pin(self) -> None:
        if not self.pin or self.trust.how != "ca+pin":
            return
        der = self.peer_certificate()
        if not (tls.pin_matches(self.pin, self.trust.anchor_der) or tls.pin_matches(self.pin, der)):
            raise TLSError(f"the pin {self.pin} matches neither the CA {self.trust.anchor_fingerprint} "
                           "nor the server certificate")

    def peer_certificate(self) -> bytes:
        assert self.writer is not None
        obj = self.writer.get_extra_info("ssl_object")
        return obj.getpeercert(binary_form=True)

    def tls_info(self) -> dict[str, Any]:
        assert self.writer is not None
        obj = self.writer.get_extra_info("ssl_object")
        cipher = obj.cipher()
        group = getattr(obj, "group", None)
        return {"version": obj.version(), "cipher": cipher[0] if cipher else None,
                "group": group() if callable(group) else None}

    async def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            with contextlib.suppress(SecurecommError, P.ProtocolError):
                if self.conn.state in (P.State.AWAIT_LOGIN, P.State.READY):
                    self._write(P.Bye())
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
        for task in (self._keepalive_task, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reading -----------------------------------------------------------------------
    def _write(self, event: P.Event) -> None:
        if self._closed_error is not None:
            raise self._closed_error
        assert self.writer is not None
        try:
            data = self.conn.send(event)
        except OversizedError as e:
            raise message_too_large(self.conn.max_frame, "the sealed message") from e
        # 4: the frame's length prefix; a relayed frame is judged as the server judges it (with the
        # longest sender name added, PROTOCOL.md 3.7), so it is refused here rather than there
        size = max(len(data) - 4, relayed_size(event) or 0)
        if size > self.max_send:
            raise message_too_large(self.max_send, "the sealed message", size,
                                    hint=f"this server takes at most {self.max_send} bytes per sealed message "
                                         "(the text plus its encryption); send less at a time, or ask its operator "
                                         "about --max-frame")
        self.writer.write(data)
        self._last_write = time.monotonic()

    def _keep_alive(self) -> None:
        """Once logged in: PING whenever nothing was sent for the keepalive interval (KEEPALIVE_SECONDS)."""
        if self._keepalive_task is None:
            self._keepalive_task = asyncio.create_task(self._keepalive_loop())

    def keepalive_interval(self) -> float:
        announced = self.server_hello.idle_timeout if self.server_hello is not None else None
        if announced is None or announced <= 0:
            return KEEPALIVE_SECONDS
        return max(0.5, min(KEEPALIVE_SECONDS, announced / 2))

    async def _keepalive_loop(self) -> None:
        interval = self.keepalive_interval()
        while self._closed_error is None:
            quiet = time.monotonic() - self._last_write
            if quiet < interval:
                await asyncio.sleep(interval - quiet)
                continue
            try:
                await asyncio.wait_for(asyncio.shield(self._ping()), REPLY_TIMEOUT)
            except TimeoutError:
                self._fail_all(NetworkError(f"the server stopped answering (no answer to a PING in "
                                            f"{REPLY_TIMEOUT:g} s)"))
                if self.writer is not None:
                    self.writer.transport.abort()  # the read loop then ends too
                return
            except (SecurecommError, P.ProtocolError):
                return  # the connection ended: the read loop has told everyone waiting

    async def _read_loop(self) -> None:
        assert self.reader is not None
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    raise NetworkError("the server closed the connection")
                self.conn.receive_data(data)
                while (ev := self.conn.next_event()) is not None:
                    self._dispatch(ev)
                if not self.events.room.is_set():  # a download's consumer is behind: stop reading until it catches up
                    await self.events.room.wait()
        except asyncio.CancelledError:
            raise
        except P.ProtocolError as e:
            self._fail_all(IntegrityError(f"protocol error from server: {e}"))
        except SecurecommError as e:
            self._fail_all(e)
        except (OSError, ssl.SSLError) as e:
            self._fail_all(NetworkError(f"connection lost: {e}"))

    def _dispatch(self, ev: P.Event) -> None:
        if isinstance(ev, P.ServerHello | P.LoginOk):
            self._resolve(self._hello_waiter if isinstance(ev, P.ServerHello) else self._waiters.pop("login", None),
                          ev)
        elif isinstance(ev, P.Receipt):
            self._resolve(self._waiters.pop(("msg", ev.msg_id), None), ev)
        elif isinstance(ev, P.Result):
            self._resolve(self._waiters.pop(("rid", ev.rid), None), ev)
        elif isinstance(ev, P.Pong):
            self._resolve(self._waiters.pop("pong", None), ev)
        elif isinstance(ev, P.Error):
            self._on_error(ev)
        else:  # DELIVER, DELIVERED, ROOM_MESSAGE, ROOM_KEY, ROOM_EVENT
            self.events.put_nowait(ev)

    def _on_error(self, ev: P.Error) -> None:
        err = error_from(ev)
        if ev.fatal and ev.code == P.ErrorCode.TOO_MANY_CLIENTS and self.login is not None:
            # after LOGIN_OK this code means a newer login replaced this session (PROTOCOL row too-many-sessions):
            # a dropped connection to `inbox --follow` and chat, which reconnect (the new-user check: the follow
            # of a laptop back from sleep exited 9)
            err = SessionReplacedError(err.message, hint=err.hint)
        key: Any = ("msg", ev.msg_id) if ev.msg_id else ("rid", ev.rid) if ev.rid is not None else None
        if ev.fatal:
            self._fail_all(err)
        elif key in self._waiters:
            fut = self._waiters.pop(key)
            if not fut.done():  # one its caller gave up on (a cancelled download) is answered by nobody
                fut.set_exception(err)
        elif ev.code == P.ErrorCode.EXPIRED and ev.msg_id:
            self.events.put_nowait(ev)  # about a message already receipted: the Messenger settles it
        else:
            # Non-fatal and about nothing we wait for (a late answer, or a hostile server's noise):
            # the connection is still good, so it is told, not made the end of the command.
            self.notice(f"the server reported an error about nothing this command is waiting for: {err.message}")

    def _fail_all(self, err: SecurecommError) -> None:
        self._closed_error = err
        self.events.put_nowait(err)
        waiters = [*self._waiters.values(), self._hello_waiter]
        self._waiters.clear()
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(err)

    @staticmethod
    def _resolve(fut: asyncio.Future[Any] | None, value: Any) -> None:
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _expect(self, key: Any) -> asyncio.Future[Any]:
        if self._closed_error is not None:
            raise self._closed_error
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        return fut

    async def _wait(self, fut: asyncio.Future[Any], timeout: float = REPLY_TIMEOUT) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as e:
            raise NetworkError("timed out waiting for the server") from e

    async def ping(self, timeout: float = REPLY_TIMEOUT) -> None:
        """PING, answered by PONG: the server's session loop is alive (allowed before login too)."""
        await self._wait(asyncio.shield(self._ping()), timeout)

    def _ping(self) -> asyncio.Future[Any]:
        """The PONG awaited: one PING at a time (PONGs carry no id), shared by whoever asks meanwhile."""
        fut = self._waiters.get("pong")
        if fut is None or fut.done():
            fut = self._expect("pong")
            # awaited through shield(): one that timed out leaves it to the connection's end, unread
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._write(P.Ping())
        return fut

    # -- login -------------------------------------------------------------------------
    async def login_password(self, user: str, password: str, identity: PrivateIdentity | None = None, *,
                             replace_key: bool = False) -> P.LoginOk:
        """Log in; with `identity`, register it, proving possession by signing this connection's challenge."""
        fut = self._expect("login")
        self._write(P.LoginPassword(user, password, identity.public.line if identity else None,
                                    self._register_proof(user, identity) if identity else None, replace_key))
        ok = await self._wait(fut)
        self.login = self._with_devices(ok) if identity is not None else ok
        self._keep_alive()
        return self.login

    def _register_proof(self, user: str, identity: PrivateIdentity) -> bytes:
        assert self.server_hello is not None and self.server_identity is not None
        return identity.sign(P.register_transcript(self.server_hello.challenge, self.server_identity.fingerprint,
                                                   user.lower()))

    async def login_key(self, user: str, identity: PrivateIdentity) -> P.LoginOk:
        assert self.server_hello is not None and self.server_identity is not None
        transcript = P.login_transcript(self.server_hello.challenge, self.server_identity.fingerprint,
                                        user.lower())
        fut = self._expect("login")
        self._write(P.LoginKey(user, identity.sign(transcript)))
        self.login = self._with_devices(await self._wait(fut))
        self._keep_alive()
        return self.login

    def _with_devices(self, ok: P.LoginOk) -> P.LoginOk:
        """A key login (or a password login that registers a key) in a version-2 session is a device:
        its LOGIN_OK carries `prekeys` (docs/PROTOCOL.md 6.7). One without it would have the client
        seal to the server's `lookup` keys and accept mail under them (version 1's way): refused."""
        if self.server_hello is not None and self.server_hello.version >= 2 and ok.prekeys is None:
            raise DowngradeError(f"{self.host}:{self.port} logged this device in without devices and forward "
                                 "secrecy (LOGIN_OK without prekeys in a version-2 session): refused; it could read "
                                 "and forge messages", hint=DOWNGRADE_HINT)
        return ok

    # -- messages ----------------------------------------------------------------------
    def seal_for_server(self, body: bytes, identity: PrivateIdentity) -> bytes:
        assert self.server_identity is not None
        return envelope.seal(body, identity, self.server_identity)

    def submit(self, sealed: bytes) -> asyncio.Future[Any]:
        """Send one sealed envelope; the future resolves with its checked receipt."""
        env = envelope.parse(sealed)
        fut = self._expect(("msg", env.header.msg_id))
        self._write(P.Send(sealed))
        return fut

    async def send_message(self, body: bytes, identity: PrivateIdentity) -> P.Receipt:
        sealed = self.seal_for_server(body, identity)
        return await self.send_for_receipt(P.Send(sealed), envelope.parse(sealed).header.msg_id, sha256(body))

    async def send_for_receipt(self, event: P.Event, msg_id: bytes, digest: bytes) -> P.Receipt:
        """Send a SEND, DIRECT or ROOM_SEND frame and return its receipt, checked against `digest`
        (the body's for SEND, the sent bytes' otherwise): the one send-and-await-receipt path."""
        fut = self.expect_receipt(msg_id)
        try:
            self._write(event)
        except BaseException:
            fut.cancel()  # refused unsent (too large): no one will wait for its receipt
            raise
        receipt: P.Receipt = await self._wait(fut)
        check_receipt(receipt, digest)
        return receipt

    def send_event(self, event: P.Event) -> None:
        self._write(event)

    def expect_receipt(self, msg_id: bytes) -> asyncio.Future[Any]:
        return self._expect(("msg", msg_id))

    @property
    def closed(self) -> bool:
        return self._closed_error is not None

    async def request(self, op: str, **args: Any) -> Any:
        result = await self._wait(self.start_request(op, **args))
        return result.data

    def start_request(self, op: str, **args: Any) -> asyncio.Future[Any]:
        """Send a REQUEST; its RESULT (or the refusal) resolves the future, with no deadline of its own: for
        file_get, whose RESULT follows the whole file (the caller times each FILE_DATA instead)."""
        rid, self._next_rid = self._next_rid, self._next_rid + 1
        fut = self._expect(("rid", rid))
        self._write(P.Request(rid, op, args))
        return fut


def check_receipt(receipt: P.Receipt, digest: bytes) -> None:
    if not same(receipt.sha256, digest):
        raise IntegrityError("the receipt's SHA-256 does not match the message sent")
