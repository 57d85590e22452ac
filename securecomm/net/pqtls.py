"""A TLS transport for asyncio on pyOpenSSL memory BIOs: post-quantum key exchange (issue 14).

Python 3.11's `ssl` links the system OpenSSL (3.0 here): no ML-KEM groups, one
curve at most, and no way to read the negotiated group. pyOpenSSL drives the
OpenSSL bundled with `cryptography` (3.5+), which negotiates X25519MLKEM768.
pyOpenSSL has no asyncio integration, so this module is the small adapter
that asyncio's own `sslproto` and Twisted's `TLSMemoryBIOProtocol` are: the
TCP transport feeds ciphertext into OpenSSL's memory BIO, OpenSSL's output
BIO is drained into the TCP transport, and the plaintext goes to an ordinary
asyncio protocol (a StreamReaderProtocol), so callers keep StreamReader and
StreamWriter exactly as with `ssl=`.

Theory of operation::

      StreamReaderProtocol  <- data_received / eof_received / connection_lost --+
              | write / close / abort / pause_reading                           |
              v                                                                 |
      TLSTransport (what StreamWriter holds) --> TLSProtocol ---------------------+
                                                   |   ^ bio_write(ciphertext)
                                     bio_read(out) v   | data_received
                                             TCP transport (asyncio)

    HANDSHAKING --handshake done--> OPEN --close()/close_notify/EOF--> CLOSED
         |                                   (close() sends close_notify first)
         +--deadline / TLS alert / EOF--> CLOSED, the handshake waiter fails

- Handshake: `start_tls` (server, after admission on the raw connection) and
  `open_connection` (client) wait at most `handshake_timeout`, then abort.
- Backpressure, network to application: StreamReader pauses the TCP transport
  (it holds that one, as with stdlib TLS); while paused no more plaintext is
  pulled out of OpenSSL either (PLAINTEXT_CHUNK bounds what is delivered).
- Backpressure, application to network: records are encrypted at once, so the
  bytes wait in the TCP transport; its pause_writing/resume_writing are passed
  to the application (StreamWriter.drain), and get_write_buffer_size counts them.
- Errors: handshake failures raise TLSError (CertificateError when the peer's
  chain or name did not verify); a TLS error later ends the connection with a
  ConnectionResetError, as a broken stdlib TLS connection does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from OpenSSL import SSL

from securecomm.errors import TLSError
from securecomm.net import pqcontext
from securecomm.net.pqcontext import reason

#: Plaintext taken out of OpenSSL per SSL_read: one TLS record holds at most
#: 16 KiB, so a bigger buffer would only be allocated and zeroed for nothing.
PLAINTEXT_CHUNK = 16 * 1024
#: Ciphertext taken out of the output BIO per bio_read; a loop drains it all.
CIPHERTEXT_CHUNK = 256 * 1024
#: Ciphertext read from a socket at once, into one buffer shared by every
#: connection: asyncio fills it and calls buffer_updated synchronously, and
#: bio_write copies it into OpenSSL at once, so no connection holds it while
#: idle (a buffer per connection would cost 256 KiB each; see figure 4).
SOCKET_READ = 256 * 1024
_shared_read_buffer = bytearray(SOCKET_READ)


class CertificateError(TLSError):
    """the peer's certificate did not verify"""

    def __init__(self, message: str, verify_message: str) -> None:
        super().__init__(message)
        self.verify_message = verify_message


class TLSInfo:
    """The parts of ssl.SSLObject callers read (get_extra_info("ssl_object")), from a pyOpenSSL connection."""

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn

    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def cipher(self) -> tuple[str, str, int] | None:
        name = self._conn.get_cipher_name()
        if name is None:
            return None
        return name, self._conn.get_cipher_version() or "", self._conn.get_cipher_bits() or 0

    def group(self) -> str | None:
        """The negotiated key-exchange group, e.g. "X25519MLKEM768"."""
        return self._conn.get_group_name()

    def selected_alpn_protocol(self) -> str | None:
        proto = self._conn.get_alpn_proto_negotiated()
        return proto.decode("ascii", "replace") if proto else None

    def getpeercert(self, binary_form: bool = True) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        assert binary_form, "only the DER form is offered"
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return cert.public_bytes(Encoding.DER) if cert is not None else b""

    def received_close_notify(self) -> bool:
        """Whether the peer ended the stream with close_notify (not a bare TCP close)."""
        return bool(self._conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN)

    def get_unverified_chain(self) -> list[bytes]:
        from cryptography.hazmat.primitives.serialization import Encoding

        return [c.public_bytes(Encoding.DER) for c in self._conn.get_peer_cert_chain(as_cryptography=True) or []]


class TLSTransport(asyncio.Transport):
    """The transport the application writes to: plaintext in, TLS records out."""

    def __init__(self, proto: TLSProtocol) -> None:
        super().__init__()
        self._proto = proto

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._proto.extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._proto.write_plaintext(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._proto.closing

    def close(self) -> None:
        self._proto.close()

    def abort(self) -> None:
        self._proto.abort()

    def is_reading(self) -> bool:
        return not self._proto.app_paused

    def pause_reading(self) -> None:
        self._proto.pause_app_reading()

    def resume_reading(self) -> None:
        self._proto.resume_app_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert self._proto.raw is not None
        self._proto.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        """Bytes written but not sent: all of them are already records in the TCP transport."""
        raw = self._proto.raw
        return raw.get_write_buffer_size() if raw is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        assert self._proto.raw is not None
        return self._proto.raw.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._proto.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._proto.app


class TLSProtocol(asyncio.BufferedProtocol):
    """Sits on the TCP transport and runs one pyOpenSSL connection over memory BIOs."""

    def __init__(self, conn: SSL.Connection, app: asyncio.Protocol, context: SSL.Context) -> None:
        self.conn = conn
        self.app = app
        self.context = context
        self.raw: asyncio.Transport | None = None
        self.app_transport = TLSTransport(self)
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A handshake that fails after start_tls gave up waiting (its deadline) is not an error to log.
        self.handshake.add_done_callback(_retrieve)
        self.closing = False
        self.app_paused = False
        self._error: BaseException | None = None
        self._lost = False

    # -- from the TCP transport --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        self._step_handshake()

    def get_buffer(self, sizehint: int) -> bytearray:
        return _shared_read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(memoryview(_shared_read_buffer)[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            self.conn.bio_write(data)
        except SSL.Error as e:
            self._fatal(e)
            return
        if not self.handshake.done():
            self._step_handshake()
        if self.handshake.done() and not self.handshake.exception():
            self._read_plaintext()

    def eof_received(self) -> bool:
        """The peer closed TCP: before the handshake ended that is a failure, after it the end of the stream."""
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionResetError("the peer closed the connection during the handshake"))
            return False
        if not self.closing:
            with contextlib.suppress(Exception):
                self.app.eof_received()
        return False  # the TCP transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("the connection closed during the handshake"))
            return  # the application protocol never saw connection_made for TLS: start_tls raises instead
        err = self._error
        self.app.connection_lost(exc if err is None else ConnectionResetError(f"TLS error: {reason(err)}"))

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    # -- handshake -----------------------------------------------------------------------
    def _step_handshake(self) -> None:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except (SSL.Error, TLSError) as e:  # TLSError: raised in a callback (ALPN), re-raised by pyOpenSSL
            self._flush()  # the alert, so the peer learns why
            self._fail_handshake(e)
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def _fail_handshake(self, e: Exception) -> None:
        failure = self.conn.get_app_data()
        verify = failure.get("verify") if isinstance(failure, dict) else None
        if verify:
            err: TLSError = CertificateError(f"certificate verify failed: {verify}", verify)
        elif isinstance(e, TLSError):
            err = e
        else:
            err = TLSError(reason(e))  # the reason alone: callers say which handshake failed
        if not self.handshake.done():
            self.handshake.set_exception(err)
        if self.raw is not None:
            self.raw.close()  # close(), not abort(): the alert already queued still leaves

    # -- plaintext in and out ------------------------------------------------------------
    def _read_plaintext(self) -> None:
        """Pull plaintext out of OpenSSL into the application, until OpenSSL wants more ciphertext."""
        chunks: list[bytes] = []
        eof = False
        try:
            while True:  # bounded: at most the plaintext of the ciphertext just received
                chunks.append(self.conn.recv(PLAINTEXT_CHUNK))
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            eof = True  # the peer's close_notify
        except SSL.Error as e:
            self._deliver(chunks)
            self._fatal(e)
            return
        self._flush()  # TLS 1.3 may answer post-handshake messages (key updates)
        self._deliver(chunks)
        if eof and not self.closing:
            keep_open = False
            with contextlib.suppress(Exception):
                keep_open = bool(self.app.eof_received())
            if not keep_open:
                self.close()

    def _deliver(self, chunks: list[bytes]) -> None:
        # One call per record rather than b"".join: StreamReader copies each into its buffer anyway.
        for data in chunks:
            if data:
                self.app.data_received(data)

    def write_plaintext(self, data: bytes) -> None:
        if self.closing or not data:
            return
        try:
            self.conn.sendall(data)
        except SSL.Error as e:
            self._fatal(e)
            return
        self._flush()

    def _flush(self) -> None:
        """Move every record OpenSSL produced into the TCP transport."""
        while True:
            try:
                out = self.conn.bio_read(CIPHERTEXT_CHUNK)
            except SSL.WantReadError:
                return
            if not out or self.raw is None or self.raw.is_closing():
                return
            self.raw.write(out)

    # -- flow control and closing ----------------------------------------------------------
    def pause_app_reading(self) -> None:
        self.app_paused = True
        if self.raw is not None:
            self.raw.pause_reading()

    def resume_app_reading(self) -> None:
        if not self.app_paused:
            return
        self.app_paused = False
        if self.raw is not None and not self.raw.is_closing():
            self.raw.resume_reading()  # nothing waits in OpenSSL: _read_plaintext always drains it

    def close(self) -> None:
        """Send close_notify, then close TCP once what is queued has left."""
        if self.closing:
            return
        self.closing = True
        if self.handshake.done() and not self.handshake.exception():
            with contextlib.suppress(SSL.Error):
                self.conn.shutdown()
            self._flush()
        if self.raw is not None:
            self.raw.close()

    def abort(self) -> None:
        self.closing = True
        if self.raw is not None:
            self.raw.abort()

    def _fatal(self, e: SSL.Error) -> None:
        self._error = e
        self.abort()

    def extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return TLSInfo(self.conn)
        if name == "sslcontext":
            return self.context  # StreamReaderProtocol reads it to know it is over TLS
        if name == "tls_group":
            return self.conn.get_group_name()
        return self.raw.get_extra_info(name, default) if self.raw is not None else default


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def new_connection(context: SSL.Context, *, server_side: bool, server_hostname: str | None) -> SSL.Connection:
    """A pyOpenSSL connection on memory BIOs (no socket), ready for its handshake."""
    conn = SSL.Connection(context, None)
    conn.set_app_data({})  # the verify callback records why a chain failed here
    if server_side:
        conn.set_accept_state()
    else:
        assert server_hostname, "a client always checks the server's name"
        pqcontext.expect_hostname(conn, server_hostname)
        conn.set_connect_state()
    return conn


async def start_tls(writer: asyncio.StreamWriter, context: SSL.Context, *, server_side: bool,
                    server_hostname: str | None = None, handshake_timeout: float = 10.0) -> None:
    """Upgrade a plain stream connection to TLS in place, like StreamWriter.start_tls with an SSLContext.

    On return the same reader and writer carry plaintext over TLS. Raises
    TLSError (or TimeoutError, ConnectionError) and aborts the connection if
    the handshake fails or does not finish within `handshake_timeout`.
    """
    # No await before set_protocol: the peer's first flight must reach OpenSSL, not the StreamReader.
    raw = writer.transport
    # StreamWriter.start_tls does the same with these two private members: the
    # protocol that feeds the StreamReader stays, only the transport under it changes.
    app: Any = writer._protocol  # type: ignore[attr-defined]
    tls = TLSProtocol(new_connection(context, server_side=server_side, server_hostname=server_hostname), app,
                      context)
    raw.set_protocol(tls)
    tls.connection_made(raw)
    try:
        await asyncio.wait_for(asyncio.shield(tls.handshake), handshake_timeout)
    except BaseException:
        raw.abort()
        raise
    writer._transport = tls.app_transport  # type: ignore[attr-defined]
    app._replace_writer(writer)


async def open_connection(host: str, port: int, context: SSL.Context, *, server_hostname: str | None = None,
                          handshake_timeout: float = 10.0,
                          limit: int = 2 ** 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection(host, port, ssl=...) on this transport: TCP first, then the TLS handshake."""
    reader, writer = await asyncio.open_connection(host, port, limit=limit)
    await start_tls(writer, context, server_side=False, server_hostname=server_hostname or host,
                    handshake_timeout=handshake_timeout)
    return reader, writer


# -- one entry point per side, whichever transport the context is for ---------------------------------
async def server_handshake(writer: asyncio.StreamWriter, context: SSL.Context | ssl.SSLContext,
                           handshake_timeout: float) -> None:
    """The server's TLS handshake on an accepted connection: pyOpenSSL or (`serve --tls stdlib`) Python's ssl."""
    if isinstance(context, SSL.Context):
        await start_tls(writer, context, server_side=True, handshake_timeout=handshake_timeout)
    else:
        await writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)


async def client_connect(host: str, port: int, context: SSL.Context | ssl.SSLContext, *, timeout: float,
                         limit: int = 2 ** 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The client's connection: pyOpenSSL (the default) or Python's ssl, the same streams either way."""
    if isinstance(context, SSL.Context):
        return await open_connection(host, port, context, server_hostname=host, handshake_timeout=timeout,
                                     limit=limit)
    return await asyncio.open_connection(host, port, ssl=context, server_hostname=host,
                                         ssl_handshake_timeout=timeout, limit=limit)


def describe_group(group: str | None) -> tuple[bool, str]:
    """(post-quantum?, the line `status` shows) for a negotiated key-exchange group."""
    if group is None:
        return False, "TLS: not post-quantum (the negotiated group is not visible to Python's ssl)"
    if group in pqcontext.PQ_GROUP_NAMES:
        return True, f"TLS: post-quantum ({group})"
    return False, f"TLS: not post-quantum ({group}, a classical group)"
