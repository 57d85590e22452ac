"""One-shot sends (`securecomm send`): seal once, send, and resend the same bytes once if the
connection ends before the receipt.

Theory of operation
-------------------
A RECEIPT is the only proof that a message is stored. When the connection
ends before it arrives (the server announced a planned shutdown with
ERROR SHUTTING_DOWN, or the connection simply dropped), the sender cannot
know whether the first copy was committed. Resending the *same envelope
bytes* is safe: the server keeps every (sender, msg_id), so a stored first
copy is answered with its original receipt (duplicate = 1) and is never
stored or delivered twice. A fresh seal would carry a new msg_id, so it is
never done on a retry.

    connect + log in --fails--> error at once (the server is not there: no retry)
        |
      send ------------receipt------------> done
        | dropped, or SHUTTING_DOWN
        v
    reconnect (backoff 0.1 s .. 1 s, until the deadline) -> resend once -> receipt | error

Everything, retry included, ends by the caller's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from securecomm.client.connection import Client
from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import sha256
from securecomm.errors import NetworkError, SecurecommError, TLSError
from securecomm.wire import protocol as P

if TYPE_CHECKING:
    from securecomm.client.directv2 import SealedDirect
    from securecomm.client.messenger import Messenger

T = TypeVar("T")
Connect = Callable[[], Awaitable[tuple[Client, Any]]]

#: First pause before reconnecting, and the cap it doubles up to: a restart takes about a second.
RECONNECT_DELAY_MIN = 0.1
RECONNECT_DELAY_MAX = 1.0
#: Copies of one message a send writes at most: the first, and one resend.
MAX_COPIES = 2


def retryable(e: BaseException) -> bool:
    """A dropped connection or a planned shutdown; not a certificate problem, which would not heal."""
    return isinstance(e, NetworkError) and not isinstance(e, TLSError)


class OneRetry:
    """Runs an attempt; after a retryable failure once logged in, reconnects and resends once."""

    def __init__(self, timeout: float, warn: Callable[[str], None]) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.warn = warn
        self.logged_in = False  # the server was reachable at least once
        self.copies = 0  # times the message was written to a connection

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def may_retry(self, e: SecurecommError) -> bool:
        return retryable(e) and self.logged_in and self.copies < MAX_COPIES and self.left() > 0

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        delay, warned = RECONNECT_DELAY_MIN, False
        while True:
            try:
                async with asyncio.timeout(max(self.left(), 0)):
                    return await attempt()
            except TimeoutError as e:
                if not self.copies:  # never written: nothing can be stored (the spec client's check: a key
                    # lookup that never answered was blamed on a receipt)
                    raise NetworkError(f"the server did not answer within {self.timeout:g}s; nothing was sent",
                                       hint="try again later") from e
                raise NetworkError(f"no receipt from the server within {self.timeout:g}s",
                                   hint="the server may have stored it; a new send is a new message, "
                                        "so check before sending again") from e
            except SecurecommError as e:
                if not self.may_retry(e):
                    raise
                if not warned:
                    self.warn(f"{e.message}; reconnecting to send the same message again")
                    warned = True
            await asyncio.sleep(min(delay, max(self.left(), 0)))
            delay = min(delay * 2, RECONNECT_DELAY_MAX)


async def send_to_server(connect: Connect, identity: PrivateIdentity, body: bytes, timeout: float,
                         warn: Callable[[str], None]) -> P.Receipt:
    """Seal `body` to the server, send it, and return its checked receipt (resent once if need be)."""
    retry = OneRetry(timeout, warn)
    sealed: bytes | None = None

    async def attempt() -> P.Receipt:
        nonlocal sealed
        client, _ = await connect()
        client.notice = warn  # an unsolicited server error is shown, and the send goes on
        retry.logged_in = True
        async with client:
            if sealed is None:
                sealed = client.seal_for_server(body, identity)
            retry.copies += 1
            msg_id = envelope.parse(sealed).header.msg_id
            return await client.send_for_receipt(P.Send(sealed), msg_id, sha256(body))

    return await retry.run(attempt)


class DirectSend:
    """`send --to USER`: one Messenger across reconnects, so the sealed bytes and the digest that the
    delivery receipt is checked against survive a resend."""

    def __init__(self, connect: Connect, identity: PrivateIdentity, paths: Any, to: str, body: bytes) -> None:
        self.connect, self.identity, self.paths = connect, identity, paths
        self.to, self.body = to, body
        self.messenger: Messenger | None = None
        self.sealed: SealedDirect | None = None
        self.msg_id = b""
        self.pump: asyncio.Task[None] | None = None

    async def send(self, timeout: float, warn: Callable[[str], None]) -> tuple[Client, P.Receipt]:
        """Stored on the server: the receipt, and the connection still open (for --wait)."""
        retry = OneRetry(timeout, warn)

        async def attempt() -> tuple[Client, P.Receipt]:
            client, profile = await self.connect()
            retry.logged_in = True
            try:
                return client, await self._send_on(client, profile.user, retry)
            except BaseException:
                await self._stop(client)
                raise

        return await retry.run(attempt)

    async def _send_on(self, client: Client, user: str, retry: OneRetry) -> P.Receipt:
        if self.messenger is None:
            from securecomm.client.messenger import Messenger  # only --to needs it; plain send starts faster

            # deliveries=False: this session shows nothing, so mail waiting for us must not be ACKed here
            self.messenger = Messenger(client, self.identity, user, self.paths, lambda ev: None, deliveries=False)
        self.messenger.client = client
        client.notice = retry.warn  # shown, not swallowed with the rest of this quiet session's events
        self.pump = asyncio.create_task(self.messenger.run())  # DELIVERED receipts, for --wait
        if self.sealed is None:
            self.sealed = await self.messenger.seal_direct(self.to, self.body)
            from securecomm.client.messenger import skipped_text

            for name in self.sealed.skipped:  # this quiet session's Alerts are dropped: say it here
                retry.warn(skipped_text(self.to, name))
        retry.copies += 1
        receipt, self.msg_id = await self.messenger.send_sealed_direct(self.to, self.sealed)
        return receipt

    async def wait_delivered(self, timeout: float) -> Any:
        assert self.messenger is not None
        return await self.messenger.wait_delivered(self.msg_id, timeout)

    async def _stop(self, client: Client) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, SecurecommError):
                await self.pump
        await client.close()

    async def close(self, client: Client) -> None:
        await self._stop(client)

    async def detach(self) -> None:
        """Stop this send's event pump and leave its connection open for the caller (send --file uploads
        on it after the notice: the pump would take the upload's FILE_ACKs)."""
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, SecurecommError):
                await self.pump
            self.pump = None
