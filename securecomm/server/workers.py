"""`serve --workers N`: N relay processes sharing one listening port, so one host uses all its cores.

Theory of operation
-------------------
The parent forks N children before any event loop or thread exists and then
only supervises: it forwards SIGINT/SIGTERM to them and exits with the first
non-zero status a child ends with (stopping the others). Each child returns
from `fork_workers` and runs an ordinary relay whose socket sets SO_REUSEPORT,
so the kernel spreads new connections over the N listeners. The children
share nothing in memory: the store (PostgreSQL) and the bus (NATS) are what
make them one server, which is why more than one worker needs both.

With `--port 0` the parent first binds (without listening) a SO_REUSEPORT
socket to pick the port every child then binds; it holds it until the
children have exited, so no other program can take the port in between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from securecomm.errors import UsageError


def check_workers(workers: int, store_url: str | None, bus: str | None) -> None:
    """More than one worker only over a shared store and bus: N SQLite relays would not share mail."""
    if workers > 1 and (store_url is None or bus is None):
        raise UsageError("--workers above 1 needs --db postgresql://... and --bus nats://...",
                         hint="the workers share no memory: the database and the bus make them one server")


def _reserve(host: str, port: int) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))  # bound, never listening: the kernel hands it no connection
    return holder, int(holder.getsockname()[1])


def fork_workers(workers: int, host: str, port: int) -> int:
    """In each child: return the port to listen on (with SO_REUSEPORT). The parent never returns."""
    holder, port = _reserve(host, port)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            holder.close()
            return port
        children.append(pid)
    sys.exit(_supervise(children, holder))


def _supervise(children: list[int], holder: socket.socket) -> int:
    def forward(sig: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    status = 0
    alive = set(children)
    while alive:
        pid, code = os.wait()
        alive.discard(pid)
        code = os.waitstatus_to_exitcode(code)
        if code != 0 and status == 0:
            status = code if code > 0 else 1
            forward(signal.SIGTERM, None)  # one worker failed (NATS or the database unreachable): stop all
    holder.close()
    return status
