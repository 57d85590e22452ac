"""A bare asyncio TLS 1.3 echo server: the baseline for what Python's transport costs.

Run by benchmarks/run.py as a subprocess: python tls_echo.py CERT KEY; prints its port.
`python tls_echo.py CERT KEY pq` echoes over the pyOpenSSL transport (net/pqtls.py,
X25519MLKEM768 first) instead, and `... stdlib-small` over stdlib ssl with the
32 KiB receive buffer the real server sets (so idle memory compares like with like);
benchmarks/pq_transport.py runs them side by side.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def echo_loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(cert: str, key: str, mode: str = "stdlib") -> None:
    if mode == "pq":
        server = await _pq_server(Path(cert), Path(key))
    else:
        if mode == "stdlib-small":
            from securecomm.server.listener import _smaller_tls_buffers

            _smaller_tls_buffers()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        server = await asyncio.start_server(echo_loop, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def _pq_server(cert: Path, key: Path) -> asyncio.Server:
    from securecomm.errors import TLSError
    from securecomm.net import pqcontext, pqtls

    ctx = pqcontext.server_context(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await pqtls.start_tls(writer, ctx, server_side=True)
        except (TLSError, OSError, TimeoutError):
            return
        await echo_loop(reader, writer)

    return await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
