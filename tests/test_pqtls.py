"""The post-quantum TLS transport (net/pqtls.py) on its own: real sockets on 127.0.0.1, real certgen certificates,
outside witnesses (system `openssl s_client`, Python's ssl) on the other end."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from OpenSSL import SSL

from securecomm.errors import TLSError
from securecomm.net import pqcontext, pqtls
from tests.conftest import run_entry

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command on this machine")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("pqhome")
    run_entry("--home", str(home), "certgen").check_returncode()
    return home / "tls"


class EchoServer:
    """A pqtls server: start_tls on each accepted stream, then echo; records what each handshake gave."""

    def __init__(self, ctx: SSL.Context, timeout: float = 10.0) -> None:
        self.ctx, self.timeout = ctx, timeout
        self.groups: list[str | None] = []
        self.failures: list[BaseException] = []
        self.closed_cleanly: list[bool] = []
        self.event = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await pqtls.start_tls(writer, self.ctx, server_side=True, handshake_timeout=self.timeout)
        except (TLSError, OSError, TimeoutError) as e:
            self.failures.append(e)
            self.event.set()
            return
        self.groups.append(writer.get_extra_info("ssl_object").group())
        self.event.set()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        self.closed_cleanly.append(writer.get_extra_info("ssl_object").received_close_notify())
        writer.close()
        self.event.set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _wait_for(cond: Callable[[], bool], event: asyncio.Event) -> None:
    while not cond():
        event.clear()
        await asyncio.wait_for(event.wait(), 30)


def test_both_ends_negotiate_x25519mlkem768(tls_dir: Path) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            reader, writer = await pqtls.open_connection(
                "localhost", port, pqcontext.client_context((tls_dir / "ca.pem").read_bytes()))
            info = writer.get_extra_info("ssl_object")
            assert (info.version(), info.group(), info.selected_alpn_protocol()) == \
                ("TLSv1.3", "X25519MLKEM768", "securecomm/1")
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await _wait_for(lambda: bool(echo.groups), echo.event)
            assert echo.groups == ["X25519MLKEM768"]
            writer.close()
            await writer.wait_closed()
            await _wait_for(lambda: bool(echo.closed_cleanly), echo.event)
            assert echo.closed_cleanly == [True]  # the client's close() sent close_notify

    asyncio.run(main())


def test_python_ssl_client_connects_with_x25519(tls_dir: Path) -> None:
    """Older securecomm clients use Python's ssl (X25519 only): they keep working."""
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
            ctx.set_ecdh_curve("X25519")
            reader, writer = await asyncio.open_connection("localhost", port, ssl=ctx)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            assert [g.lower() for g in echo.groups if g] == ["x25519"]  # OpenSSL spells it "x25519"
            writer.close()

    asyncio.run(main())


async def _s_client(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        OPENSSL or "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief", "-tls1_3", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(b""), 60)
    return int(proc.returncode or 0), out.decode(errors="replace")


@needs_openssl
@pytest.mark.parametrize("group", ["X25519", "P-256", "P-384"])
def test_openssl_s_client_classical_group_succeeds(tls_dir: Path, group: str) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            _, out = await _s_client(port, "-groups", group, "-CAfile", str(tls_dir / "ca.pem"))
            await _wait_for(lambda: bool(echo.groups or echo.failures), echo.event)
            assert "Verification: OK" in out, out
            assert echo.failures == [] and len(echo.groups) == 1
            names = {"X25519": "x25519", "P-256": "secp256r1", "P-384": "secp384r1"}
            assert (echo.groups[0] or "").lower() in {group.lower(), names[group]}

    asyncio.run(main())


@needs_openssl
@pytest.mark.parametrize("group", ["X448", "secp521r1", "ffdhe2048", "ffdhe8192"])
def test_group_probes_outside_the_list_are_refused(tls_dir: Path, group: str) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            code, out = await _s_client(port, "-groups", group)
            await _wait_for(lambda: bool(echo.groups or echo.failures), echo.event)
            assert code != 0, out
            assert echo.groups == []
            assert isinstance(echo.failures[0], TLSError)
            assert "no suitable key share" in str(echo.failures[0]) or "handshake failure" in out, echo.failures

    asyncio.run(main())


@needs_openssl
def test_require_pq_refuses_a_classical_client_and_takes_a_pq_one(tls_dir: Path) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key", require_pq=True))
        async with echo as port:
            code, out = await _s_client(port, "-groups", "X25519:P-256:P-384")
            await _wait_for(lambda: bool(echo.failures), echo.event)
            assert code != 0 and echo.groups == [], out
            _, writer = await pqtls.open_connection(
                "localhost", port, pqcontext.client_context((tls_dir / "ca.pem").read_bytes()))
            await _wait_for(lambda: bool(echo.groups), echo.event)
            assert echo.groups == ["X25519MLKEM768"]
            writer.close()

    asyncio.run(main())


def test_wrong_hostname_is_refused(tls_dir: Path) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            ctx = pqcontext.client_context((tls_dir / "ca.pem").read_bytes())
            with pytest.raises(pqtls.CertificateError) as err:
                await pqtls.open_connection("127.0.0.1", port, ctx, server_hostname="chat.example.net")
            assert "hostname mismatch" in err.value.verify_message
            # the same certificate names 127.0.0.1: an IP address is checked too, and passes
            _, writer = await pqtls.open_connection("127.0.0.1", port, ctx)
            writer.close()

    asyncio.run(main())


def test_untrusted_ca_is_refused(tls_dir: Path, tmp_path: Path) -> None:
    run_entry("--home", str(tmp_path), "certgen").check_returncode()
    other_ca = (tmp_path / "tls" / "ca.pem").read_bytes()

    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            with pytest.raises(pqtls.CertificateError) as err:
                await pqtls.open_connection("localhost", port, pqcontext.client_context(other_ca))
            assert "certificate" in err.value.verify_message

    asyncio.run(main())


def test_handshake_deadline_drops_a_silent_client(tls_dir: Path) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"), timeout=0.5)
        async with echo as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # TCP only, never a ClientHello
            await _wait_for(lambda: bool(echo.failures), echo.event)
            assert isinstance(echo.failures[0], TimeoutError)
            assert await asyncio.wait_for(reader.read(), 30) == b""  # the server closed it
            writer.close()

    asyncio.run(main())


def test_other_alpn_is_refused(tls_dir: Path) -> None:
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            ctx = pqcontext.client_context((tls_dir / "ca.pem").read_bytes())
            ctx.set_alpn_protos([b"http/1.1"])
            with pytest.raises(TLSError):
                await pqtls.open_connection("localhost", port, ctx)
            await _wait_for(lambda: bool(echo.failures), echo.event)
            assert "another application protocol" in str(echo.failures[0])

    asyncio.run(main())


def test_backpressure_both_ways(tls_dir: Path) -> None:
    """A client that does not read: its reader stops at its limit, the server's drain() waits; then all arrives."""
    size = 16 * 1024 * 1024
    blob = bytes(range(256)) * (size // 256)

    async def main() -> None:
        drained = asyncio.Event()
        written: list[int] = []

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await pqtls.start_tls(writer, ctx, server_side=True)
            writer.write(blob)
            written.append(writer.transport.get_write_buffer_size())
            await writer.drain()
            drained.set()
            writer.close()

        ctx = pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key")
        server = await asyncio.start_server(flood, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await pqtls.open_connection(
            "localhost", port, pqcontext.client_context((tls_dir / "ca.pem").read_bytes()), limit=64 * 1024)
        with pytest.raises(TimeoutError):  # the client reads nothing, so the server cannot drain
            await asyncio.wait_for(asyncio.shield(drained.wait()), 0.5)
        assert written and written[0] > 1024 * 1024  # the records wait in the server's transport, counted
        assert len(reader._buffer) <= 4 * 64 * 1024 + 256 * 1024  # the client's reader paused near its limit
        got = await asyncio.wait_for(reader.readexactly(size), 60)
        assert got == blob
        await asyncio.wait_for(drained.wait(), 30)
        writer.close()
        server.close()

    asyncio.run(main())


def test_binding_group_list_is_there() -> None:
    """Fails loudly if cryptography's binding loses SSL_CTX_set1_curves_list or pyOpenSSL renames _context:
    then set_groups falls back to one classical curve and TLS is no longer post-quantum (see pqcontext)."""
    from cryptography.hazmat.bindings.openssl.binding import Binding

    assert hasattr(Binding.lib, "SSL_CTX_set1_curves_list")
    assert pqcontext.set_groups(SSL.Context(SSL.TLS_METHOD)) == pqcontext.GROUPS


def test_binding_hostname_check_is_there() -> None:
    """Fails loudly if the hostname check's binding goes: the client would then refuse every server."""
    from cryptography.hazmat.bindings.openssl.binding import Binding

    for name in ("SSL_get0_param", "X509_VERIFY_PARAM_set1_host", "X509_VERIFY_PARAM_set1_ip"):
        assert hasattr(Binding.lib, name), name
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    pqcontext.expect_hostname(conn, "localhost")
    pqcontext.expect_hostname(conn, "::1")


def test_set_groups_rejects_an_unknown_list_with_the_classical_fallback() -> None:
    """The fallback path: a list OpenSSL refuses leaves one classical curve, never OpenSSL's defaults."""
    assert pqcontext.set_groups(SSL.Context(SSL.TLS_METHOD), "NoSuchGroup") == pqcontext.FALLBACK_CURVE


def test_probe_reads_the_chain_of_a_pq_only_server_without_trusting_it(tls_dir: Path) -> None:
    """First contact (TOFU / --pin) must work against `serve --require-pq` too: the probe offers the same groups."""
    from securecomm.net import tls

    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key", require_pq=True))
        async with echo as port:
            chain = await asyncio.to_thread(pqcontext.fetch_server_chain, "localhost", port)
            await _wait_for(lambda: bool(echo.groups or echo.failures), echo.event)
            ca_der = tls.pem_to_der((tls_dir / "ca.pem").read_bytes())
            assert len(chain) == 2 and chain[1] == ca_der and tls.presented_ca(chain) == ca_der
            assert echo.groups == ["X25519MLKEM768"]

    asyncio.run(main())


def test_probe_of_a_closed_port_is_a_network_error() -> None:
    import socket

    from securecomm.errors import NetworkError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(NetworkError, match="cannot reach"):
            pqcontext.fetch_server_chain("127.0.0.1", port, timeout=5)


def test_fallback_keeps_a_restricted_classical_group(tls_dir: Path) -> None:
    """Were the group-list binding gone, the server would take P-256 alone: not OpenSSL's default list."""
    async def main() -> None:
        ctx = pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key")
        assert pqcontext.set_groups(ctx, "NoSuchGroup") == pqcontext.FALLBACK_CURVE  # the fallback path, for real
        echo = EchoServer(ctx)
        ca = (tls_dir / "ca.pem").read_bytes()
        async with echo as port:
            with pytest.raises(TLSError):
                await pqtls.open_connection("localhost", port, pqcontext.client_context(ca, groups="X25519:X448"))
            _, writer = await pqtls.open_connection("localhost", port, pqcontext.client_context(ca))
            await _wait_for(lambda: bool(echo.groups), echo.event)
            assert echo.groups == ["secp256r1"]
            writer.close()

    asyncio.run(main())


def test_a_forged_record_after_the_handshake_ends_the_stream_with_a_connection_error(tls_dir: Path) -> None:
    """A record that does not decrypt: the reader sees ConnectionResetError naming the TLS reason, as with ssl."""
    async def main() -> None:
        seen: list[BaseException] = []
        done = asyncio.Event()
        ctx = pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await pqtls.start_tls(writer, ctx, server_side=True)
            try:
                await reader.read(100)
            except ConnectionError as e:
                seen.append(e)
            done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await pqtls.open_connection("localhost", port,
                                                pqcontext.client_context((tls_dir / "ca.pem").read_bytes()))
        raw = writer.transport._proto.raw  # under TLS: bytes that are a record header and junk
        raw.write(b"\x17\x03\x03\x00\x20" + bytes(32))
        await asyncio.wait_for(done.wait(), 30)
        assert len(seen) == 1 and isinstance(seen[0], ConnectionResetError)
        assert "TLS error" in str(seen[0]) and "BAD_RECORD_MAC" in str(seen[0]).upper().replace(" ", "_")
        writer.close()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("transport", ["pq", "stdlib"])
def test_one_entry_point_per_side_for_either_transport(tls_dir: Path, transport: str) -> None:
    """server_handshake / client_connect take either context; pq on both ends gives the hybrid group."""
    from securecomm.net import tls

    async def main() -> None:
        if transport == "pq":
            sctx: object = pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key")
        else:
            sctx = tls.server_context(tls_dir / "server.pem", tls_dir / "server.key")
        groups: list[str | None] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await pqtls.server_handshake(writer, sctx, 10)  # type: ignore[arg-type]
            info = writer.get_extra_info("ssl_object")
            groups.append(info.group() if hasattr(info, "group") and transport == "pq" else "stdlib")
            writer.write(await reader.readexactly(2))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ca = (tls_dir / "ca.pem").read_bytes()
        cctx = pqcontext.client_context(ca) if transport == "pq" else tls.client_context(ca)
        reader, writer = await pqtls.client_connect("localhost", port, cctx, timeout=10)
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        assert groups == (["X25519MLKEM768"] if transport == "pq" else ["stdlib"])
        writer.close()
        server.close()

    asyncio.run(main())


def test_describe_group() -> None:
    assert pqtls.describe_group("X25519MLKEM768") == (True, "TLS: post-quantum (X25519MLKEM768)")
    assert pqtls.describe_group("x25519")[0] is False
    assert pqtls.describe_group(None)[0] is False


def test_a_peer_that_sends_one_byte_at_a_time_is_served(tls_dir: Path) -> None:
    """Records split across many TCP reads (handshake and data) reassemble: the server echoes exactly."""
    async def main() -> None:
        echo = EchoServer(pqcontext.server_context(tls_dir / "server.pem", tls_dir / "server.key"))
        async with echo as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = pqtls.new_connection(pqcontext.client_context((tls_dir / "ca.pem").read_bytes()),
                                        server_side=False, server_hostname="localhost")

            async def trickle_out() -> None:
                with contextlib.suppress(SSL.WantReadError):
                    while out := conn.bio_read(65536):
                        for i in range(len(out)):
                            writer.write(out[i:i + 1])
                            await writer.drain()

            async def pump(step: Callable[[], object]) -> object:
                while True:
                    try:
                        return step()
                    except SSL.WantReadError:
                        await trickle_out()
                        conn.bio_write(await asyncio.wait_for(reader.read(65536), 30))

            await pump(conn.do_handshake)
            await trickle_out()
            assert conn.get_group_name() == "X25519MLKEM768"
            conn.sendall(b"one byte at a time")
            await trickle_out()
            got = b""
            while len(got) < 18:
                got += await pump(lambda: conn.recv(100))  # type: ignore[operator]
            assert got == b"one byte at a time"
            writer.close()

    asyncio.run(main())
