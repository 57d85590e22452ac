"""Cut-through (docs/PROTOCOL.md 4.4): the recipient hears of a file when its upload begins and fetches it
while it uploads. Real server, real TLS, the installed CLI; a TCP relay in front of the server holds the
sender's bytes past a point, so the test sees the download running ahead of an unfinished upload (an
event it waits for), not a race it hopes to win."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ENTRY
from tests.serverproc import ServerProc, sc, users_logged_in

SIZE = 3 * 1024 * 1024 + 777
#: Bytes the relay lets through from the sender before it holds the rest: the TLS handshake, the login,
#: the offer, the notice and about 1 MiB of the upload (the whole stream is ~3 MiB).
LET_THROUGH = 1024 * 1024
WAIT = 60.0


class HoldingRelay:
    """TCP from the sender to the server: the first LET_THROUGH bytes the sender writes pass, the rest
    wait until `release()`. The server's answers always pass."""

    def __init__(self, port: int) -> None:
        self.port_to = port
        self.passed = 0
        self.holding = threading.Event()
        self.released = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port_to))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_sender: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_sender and not self.released.is_set():
                    room = max(0, LET_THROUGH - self.passed)
                    if len(data) > room:
                        dst.sendall(data[:room])
                        self.passed += room
                        data = data[room:]
                        self.holding.set()
                        self.released.wait(WAIT)
                    self.passed += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def _until(what: str, check, timeout: float = WAIT):
    """Wait for a condition of another process's making (bounded), checking it as it changes."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return got


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    relay = HoldingRelay(srv.port)
    yield srv, homes, tmp_path, relay
    relay.close()
    srv.stop(signal.SIGKILL)


def _notice_id(home: Path) -> str | None:
    r = sc(home, "inbox")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    return text.rsplit("securecomm fetch ", 1)[1].split()[0] if "securecomm fetch " in text else None


def test_the_recipient_fetches_while_the_upload_is_still_running(world):
    srv, homes, tmp, relay = world
    src = tmp / "clip.bin"
    body = os.urandom(SIZE)
    src.write_bytes(body)
    sender = subprocess.Popen([ENTRY, "--home", str(homes["alice"]), "send", "--to", "bob", "--file", str(src),
                               "--server", f"localhost:{relay.port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fetcher = None
    try:
        assert relay.holding.wait(WAIT), "the upload never reached the relay's hold"
        file_id = _until("the early notice in bob's inbox", lambda: _notice_id(homes["bob"]))
        parts = list((srv.home / "files").glob("*.part"))
        assert [p.name for p in parts] == [f"{file_id}.part"] and 0 < parts[0].stat().st_size < SIZE
        out = tmp / "got.bin"
        fetcher = subprocess.Popen([ENTRY, "--home", str(homes["bob"]), "fetch", file_id, "-o", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # bob's opener writes plaintext into the temp file beside OUT as the held bytes arrive
        _until("plaintext written while the upload is held",
               lambda: any(p.stat().st_size > 0 for p in tmp.glob(".got.bin.*.tmp")))
        assert sender.poll() is None and fetcher.poll() is None and not out.exists()
        assert (srv.home / "files" / f"{file_id}.part").exists()  # the upload is still unfinished
        relay.release()
        _, s_err = sender.communicate(timeout=WAIT)
        assert sender.returncode == 0, s_err
        f_out, f_err = fetcher.communicate(timeout=WAIT)
        assert fetcher.returncode == 0, f_err
        assert out.read_bytes() == body and f_out.decode().strip() == str(out)
        assert b"signature and sha256 verified" in f_err
        assert list(tmp.glob(".got.bin.*")) == []
        _until("the server's copy deleted after the fetch", lambda: not (srv.home / "files" / file_id).exists())
    finally:
        relay.release()
        for p in (sender, fetcher):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_a_fetch_of_a_stalled_upload_says_so_and_resumes_when_it_moves_again(tmp_path):
    """--file-wait 0.5: the upload is held; bob's fetch is told the upload stalled (a warning, not a
    hang or a failure), keeps resuming from what it has, and completes once the upload moves again."""
    srv = ServerProc(tmp_path / "srv", "--file-wait", "0.5").start()
    relay = None
    try:
        homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
        relay = HoldingRelay(srv.port)
        src = tmp_path / "clip.bin"
        body = os.urandom(SIZE)
        src.write_bytes(body)
        sender = subprocess.Popen([ENTRY, "--home", str(homes["alice"]), "send", "--to", "bob", "--file",
                                   str(src), "--server", f"localhost:{relay.port}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert relay.holding.wait(WAIT)
        file_id = _until("the early notice", lambda: _notice_id(homes["bob"]))
        out = tmp_path / "got.bin"
        fetcher = subprocess.Popen([ENTRY, "--home", str(homes["bob"]), "fetch", file_id, "-o", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _until("the server telling bob the upload stalled",
               lambda: any("file-upload-stalled" in line or "has not advanced" in line for line in srv.log_lines))
        assert fetcher.poll() is None and not out.exists()  # it waits on, resuming
        relay.release()
        assert sender.wait(WAIT) == 0
        _, f_err = fetcher.communicate(timeout=WAIT)
        assert fetcher.returncode == 0, f_err
        assert out.read_bytes() == body
        assert b"the sender's upload has not advanced" in f_err and b"Traceback" not in f_err
    finally:
        if relay is not None:
            relay.close()
        srv.stop(signal.SIGKILL)
