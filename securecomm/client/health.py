"""`status --health`: is the server up? TLS connect, HELLO, PING -> PONG; no login, no account.

For load balancers and monitoring: it proves the listener accepts, the TLS
handshake completes with a certificate the checker trusts, the protocol
answers, and the event loop is not stuck (PONG comes from the session's read
loop). It says nothing about the store; a stuck disk shows in the metrics
(commit latency) instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from securecomm.errors import NetworkError

#: Seconds the whole check may take: a monitor wants a verdict, not a hang.
HEALTH_TIMEOUT = 10.0


async def check_health(paths: Any, server: str, *, ca: str | None = None, pin: str | None = None,
                       timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    """Connect and ping; returns what a monitor may log. Raises NetworkError or TLSError."""
    from securecomm.client.login import prepare

    started = time.monotonic()
    client = prepare(paths, server, ca=ca, pin=pin)  # never asks: an unknown server is an error here
    try:
        await asyncio.wait_for(client.connect(timeout), timeout)
        await client.ping(max(0.1, timeout - (time.monotonic() - started)))
        tls = client.tls_info()
    except TimeoutError as e:
        raise NetworkError(f"{server} did not answer within {timeout:g} s") from e
    finally:
        await client.close()
    return {"server": server, "status": "ok", "tls": tls["version"],
            "ms": round((time.monotonic() - started) * 1000, 1)}

