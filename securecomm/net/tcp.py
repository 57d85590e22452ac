"""TCP options for the server's accepted connections: notice a peer that vanished.

A client whose link dies without a FIN or RST (a laptop lid, a NAT that forgot
the mapping) leaves a socket that looks open. While the connection is quiet,
only --idle-timeout (300 s) would end it, and a running file_get is never
idle; while the server has data on its way to it, the kernel retransmits for
about 15 minutes (tcp_retries2). Meanwhile the session counts against
--max-sessions-per-user and --max-clients. Keepalive probes after a minute of
silence and a bound on unacknowledged data end such a connection within about
two minutes, as the kernel sees it: the read loop then gets an error and the
session closes as for any hang-up. A live client answers probes from its
kernel, whatever its application does, so this costs a live one nothing.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

#: Seconds of silence before the first probe, between probes, and probes unanswered before the end.
KEEPIDLE, KEEPINTVL, KEEPCNT = 60, 15, 4
#: Seconds that sent data may stay unacknowledged before the kernel ends the connection (TCP_USER_TIMEOUT,
#: Linux), at least: the caller gives more where its --frame-timeout lets a reader take longer.
UNACKED_SECONDS = 120.0


def watch_peer(sock: Any, unacked_seconds: float = UNACKED_SECONDS) -> bool:
    """Turn on keepalive (and the options this platform has) on a connected TCP socket.

    `sock`: a socket or asyncio's TransportSocket (writer.get_extra_info("socket")). Returns
    False where the socket is not TCP (a Unix socket) or refused the basic option."""
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM or \
            getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return False
    for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT),
                        ("TCP_USER_TIMEOUT", int(unacked_seconds * 1000))):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; elsewhere the system's defaults stand
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return True
