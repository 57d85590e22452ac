"""A real `securecomm serve` in a subprocess on an ephemeral loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from securecomm.wire import protocol as P
from securecomm.wire.frames import FrameDecoder
from tests.conftest import ENTRY, run_entry

PASSWORD = "correct horse battery"


class ServerProc:
    #: Global options before `serve` (e.g. "-v" for the debug lines a test waits on).
    options: tuple[str, ...] = ()

    def __init__(self, home: Path, *extra: str, serve_version_1: bool = False) -> None:
        """`serve_version_1`: the server also serves protocol version 1 (ServerConfig.serve_version_1, which
        has no command-line option: started through benchmarks/serve_v1.py), for tests pinned to it."""
        self.home, self.extra, self.serves_version_1 = home, extra, serve_version_1
        self.command = [sys.executable, str(Path(__file__).resolve().parent.parent / "benchmarks" / "serve_v1.py")] \
            if serve_version_1 else [ENTRY]
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_lines: list[str] = []

    def start(self, timeout: float = 30) -> ServerProc:
        self.log_lines = []
        port_args = ["--port", str(self.port)] if self.port else ["--port", "0"]
        self.proc = subprocess.Popen([*self.command, "--home", str(self.home), *self.options, "serve", *port_args,
                                      *self.extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc and self.proc.stderr
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                self.log_lines.append(line)
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.stop(signal.SIGKILL)
            raise RuntimeError("server did not start:\n" + self.log)
        return self

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc = None

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log)
            if m:
                return m.group(0)
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in server log:\n{self.log}")


def add_user(home: Path, name: str, *extra: str, password: str = PASSWORD) -> None:
    r = run_entry("--home", str(home), "user", "add", name, "--password-stdin", *extra,
                  input=(password + "\n").encode())
    assert r.returncode == 0, r.stderr


def login(client_home: Path, server: ServerProc, name: str, password: str = PASSWORD, *extra: str):
    ca = server.home / "tls" / "ca.pem"
    return run_entry("--home", str(client_home), "user", "login", name, "--server", server.address,
                     "--ca", str(ca), "--password-stdin", *extra, input=(password + "\n").encode())


def users_logged_in(srv: ServerProc, root: Path, users: tuple[str, ...] = ("alice", "bob")) -> dict[str, Path]:
    """Add each user to the running server and log them in from their own home under root."""
    homes = {}
    for u in users:
        add_user(srv.home, u)
        homes[u] = root / u
        r = login(homes[u], srv, u)
        assert r.returncode == 0, r.stderr
    return homes


def sc(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The installed entry point with --home."""
    return run_entry("--home", str(home), *args, input=input)


def mailbox_count(srv: ServerProc) -> int:
    """Direct messages waiting in the server's database, read with sqlite3 itself."""
    import sqlite3

    con = sqlite3.connect(srv.home / "securecomm.db")
    try:
        return int(con.execute("SELECT COUNT(*) FROM mailbox").fetchone()[0])
    finally:
        con.close()


# -- a raw TLS client for hostile-input tests -------------------------------------------
def tls_socket(server: ServerProc, timeout: float = 10) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(server.home / "tls" / "ca.pem"))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_events(sock: ssl.SSLSocket, timeout: float = 10) -> list[P.Event]:
    """Read until the server closes; return every event it sent."""
    sock.settimeout(timeout)
    dec, events = FrameDecoder(), []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError):
            break
        if not data:
            break
        dec.receive_data(data)
        while (f := dec.next_frame()) is not None:
            events.append(P.decode_payload(f))
    return events


def frame(event: P.Event) -> bytes:
    return P.encode_event(event)


def raw_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def env_without_home() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SECURECOMM_HOME"}
