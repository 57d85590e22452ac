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
    """TCP from the sender to the server: on the first connection, the first LET_THROUGH bytes the sender
    writes pass and the rest wait until `release()`; later connections and the server's answers pass."""

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
        first = True
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port_to))
            threading.Thread(target=self._pipe, args=(client, upstream, first), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
            first = False

    def _pipe(self, src: socket.socket, dst: socket.socket, held: bool) -> None:
        try:
            while data := src.recv(65536):
                if held and not self.released.is_set():
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
    return text.rsplit(" fetch ", 1)[1].split()[0] if " fetch " in text else None


def _send_held(homes: dict, relay: HoldingRelay, src: Path) -> subprocess.Popen:
    """alice's `send --to bob --file SRC` through the relay (its upload is held past LET_THROUGH)."""
    return subprocess.Popen([ENTRY, "--home", str(homes["alice"]), "send", "--to", "bob", "--file", str(src),
                             "--server", f"localhost:{relay.port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _fetch(homes: dict, file_id: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([ENTRY, "--home", str(homes["bob"]), "fetch", file_id, "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_recipient_fetches_while_the_upload_is_still_running(world):
    srv, homes, tmp, relay = world
    src = tmp / "clip.bin"
    body = os.urandom(SIZE)
    src.write_bytes(body)
    sender = _send_held(homes, relay, src)
    fetcher = None
    try:
        assert relay.holding.wait(WAIT), "the upload never reached the relay's hold"
        file_id = _until("the early notice in bob's inbox", lambda: _notice_id(homes["bob"]))
        parts = list((srv.home / "files").glob("*.part"))
        assert [p.name for p in parts] == [f"{file_id}.part"] and 0 < parts[0].stat().st_size < SIZE
        out = tmp / "got.bin"
        fetcher = _fetch(homes, file_id, out)
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
        _kill(sender, fetcher)


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
        sender = _send_held(homes, relay, src)
        assert relay.holding.wait(WAIT)
        file_id = _until("the early notice", lambda: _notice_id(homes["bob"]))
        out = tmp_path / "got.bin"
        fetcher = _fetch(homes, file_id, out)
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


def test_a_waiting_download_leaves_its_connection_free_for_everything_else(tmp_path):
    """A file_get of an upload in progress runs beside the connection's other traffic (the spec-only
    client's check: its session answered nothing, not even PING, until the get ended). Raw frames on a
    real server (the error table's World, tests/test_error_table.py)."""
    from securecomm.wire import protocol as P
    from securecomm.wire.files import FileAck, FileData, FilePut
    from tests.test_error_table import World, _offer, _serve

    w = World(_serve(tmp_path / "srv"))
    try:
        alice, bob = w.alice(), w.bob()
        file_id = _offer(alice)  # 4 bytes, b"abcd"
        alice.send(FilePut(file_id, 0, b"ab"))
        assert isinstance(alice.until(FileAck), FileAck)
        bob.send(P.Request(5, "file_get", {"file_id": file_id.hex(), "offset": 0}))
        first = bob.until(FileData)
        assert isinstance(first, FileData) and first.data == b"ab"
        # the get now waits for the rest (--file-wait 20 s); the same connection answers at once meanwhile
        bob.send(P.Ping(), P.Request(6, "relay_info", {}))
        got = [bob.next() for _ in range(2)]
        assert isinstance(got[0], P.Pong) and isinstance(got[1], P.Result) and got[1].rid == 6, got
        # a second get of the same file on this connection follows the first, so their FILE_DATA never mix
        bob.send(P.Request(7, "file_get", {"file_id": file_id.hex(), "offset": 2}))
        alice.send(FilePut(file_id, 2, b"cd"))
        ack = alice.until(FileAck)
        assert isinstance(ack, FileAck) and ack.complete
        rest = [bob.next() for _ in range(4)]
        assert [type(e).__name__ for e in rest] == ["FileData", "Result", "FileData", "Result"], rest
        assert (rest[0].offset, rest[0].data, rest[1].rid) == (2, b"cd", 5)
        assert (rest[2].offset, rest[2].data, rest[3].rid) == (2, b"cd", 7)
    finally:
        w.srv.stop(signal.SIGKILL)


@pytest.mark.parametrize("sig, said", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_an_interrupted_send_cancels_the_upload_it_announced(world, sig, said):
    """Ctrl-C or SIGTERM during `send --file`, after bob was told of the file: the sender cancels the
    upload (file_cancel) before it exits 130, so bob's fetch says at once that the file is gone (the
    spec-only client's check: it waited for an upload nobody would finish, and the sender printed a
    stray traceback)."""
    srv, homes, tmp, relay = world
    src = tmp / "clip.bin"
    src.write_bytes(os.urandom(SIZE))
    sender = _send_held(homes, relay, src)
    try:
        assert relay.holding.wait(WAIT)
        file_id = _until("the early notice", lambda: _notice_id(homes["bob"]))
        sender.send_signal(sig)
        _, err = sender.communicate(timeout=WAIT)
    finally:
        _kill(sender)
    text = err.decode()
    assert sender.returncode == 130, text
    assert "bob was told about this file; its unfinished upload was cancelled" in text
    assert f"securecomm: error: {said}" in text and "Traceback" not in text and "never retrieved" not in text
    assert not (srv.home / "files" / f"{file_id}.part").exists()
    out = tmp / "got.bin"
    r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
    assert r.returncode == 3 and not out.exists(), r.stderr
    assert b"its sender cancelled the upload" in r.stderr
    # and the notice, which holds the file's key, is gone from bob's device (the new-user check: it stayed);
    # a second fetch says what the first found
    assert not list(homes["bob"].rglob(f"{file_id}.json"))
    r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
    assert r.returncode == 3 and b"is not on the server (a fetch found so before" in r.stderr, r.stderr


def test_hanging_up_on_a_waiting_download_frees_the_session_at_once(tmp_path):
    """Attack check: a download waiting for an upload kept its session (and a --max-sessions-per-user
    slot) after the recipient hung up, for as long as the sender trickled bytes: a sender could lock the
    recipient out of the account. Now the hang-up ends the download with the session."""
    from securecomm.wire import protocol as P
    from securecomm.wire.files import FileAck, FileData, FilePut
    from tests.test_error_table import World, _offer, _serve

    w = World(_serve(tmp_path / "srv", "--max-sessions-per-user", "1", "--file-wait", "25"))
    try:
        alice, bob = w.alice(), w.bob()
        file_id = _offer(alice)
        alice.send(FilePut(file_id, 0, b"ab"))
        assert isinstance(alice.until(FileAck), FileAck)
        bob.send(P.Request(5, "file_get", {"file_id": file_id.hex(), "offset": 0}))
        assert isinstance(bob.until(FileData), FileData)
        bob.close()  # Ctrl-C on fetch; the get would wait 25 s for the rest
        refusals = []
        deadline = time.monotonic() + 15
        while True:  # the server sees the hang-up within moments (before: only after --file-wait, 25 s)
            try:
                w.bob().close()
                break
            except AssertionError as e:  # "bob already has 1 sessions logged in"
                refusals.append(str(e))
                assert time.monotonic() < deadline, refusals[-1]
                time.sleep(0.1)
        assert len(refusals) < 50
    finally:
        w.srv.stop(signal.SIGKILL)


def test_a_terminated_fetch_leaves_no_temp_file(world):
    """Attack check: SIGTERM on a fetch waiting for an upload left its hidden temp file (verified
    plaintext) beside the output; now SIGTERM ends it as Ctrl-C does: exit 130, nothing left."""
    _, homes, tmp, relay = world
    src = tmp / "clip.bin"
    src.write_bytes(os.urandom(SIZE))
    sender = _send_held(homes, relay, src)
    fetcher = None
    try:
        assert relay.holding.wait(WAIT)
        file_id = _until("the early notice", lambda: _notice_id(homes["bob"]))
        out = tmp / "got.bin"
        fetcher = _fetch(homes, file_id, out)
        _until("plaintext in the temp file", lambda: any(p.stat().st_size > 0 for p in tmp.glob(".got.bin.*.tmp")))
        fetcher.send_signal(signal.SIGTERM)
        _, err = fetcher.communicate(timeout=WAIT)
        assert fetcher.returncode == 130 and b"terminated (SIGTERM)" in err and b"Traceback" not in err, err
        assert list(tmp.glob(".got.bin*")) == [] and not out.exists()
    finally:
        relay.release()
        _kill(sender, fetcher)


def test_a_long_download_is_not_cut_as_idle(tmp_path):
    """Re-check of the attack fixes: once file_get ran beside the read loop, a recipient taking a long
    download (sending nothing meanwhile) was cut by --idle-timeout ("timeout: idle"). --idle-timeout 1,
    and an upload that trickles one byte every half second for four seconds: bob gets each as it lands,
    then the RESULT, on the one connection."""
    from securecomm.wire import protocol as P
    from securecomm.wire.files import FileAck, FileData, FilePut
    from tests.test_error_table import World, _serve

    w = World(_serve(tmp_path / "srv", "--idle-timeout", "1"))
    try:
        alice, bob = w.alice(), w.bob()
        alice.send(P.Request(7, "file_offer", {"to": "bob", "size": 8}))
        offer = alice.until(P.Result)
        assert isinstance(offer, P.Result), offer
        file_id = bytes.fromhex(offer.data["file_id"])
        bob.send(P.Request(5, "file_get", {"file_id": file_id.hex(), "offset": 0}))
        started = time.monotonic()
        for at in range(8):
            alice.send(FilePut(file_id, at, bytes([65 + at])))
            assert isinstance(alice.until(FileAck), FileAck)
            got = bob.until(FileData)
            assert isinstance(got, FileData) and (got.offset, got.data) == (at, bytes([65 + at])), got
            alice.send(P.Ping())  # alice's own connection is not idle either
            assert isinstance(alice.until(P.Pong), P.Pong)
            time.sleep(0.5)  # the sender's pace, not a wait for a result
        done = bob.until(P.Result)
        assert isinstance(done, P.Result) and done.rid == 5 and done.data["size"] == 8, done
        assert time.monotonic() - started > 3  # well past --idle-timeout
    finally:
        w.srv.stop(signal.SIGKILL)


def test_more_file_gets_at_once_than_allowed_end_the_connection(tmp_path):
    """Re-check: a fifth file_get used to block the read loop until a slot freed, so a hang-up went
    unseen; now gets past the queue's bound (16) are refused, fatal BUSY (row file-gets-busy)."""
    from securecomm.wire import protocol as P
    from securecomm.wire.files import FileAck, FilePut
    from tests.test_error_table import World, _offer, _serve

    w = World(_serve(tmp_path / "srv"))
    try:
        alice, bob = w.alice(), w.bob()
        file_id = _offer(alice)
        alice.send(FilePut(file_id, 0, b"ab"))
        assert isinstance(alice.until(FileAck), FileAck)
        bob.send(*(P.Request(100 + i, "file_get", {"file_id": file_id.hex(), "offset": 0}) for i in range(17)))
        err = bob.error()
        assert err.code == P.ErrorCode.BUSY and err.fatal and err.rid == 116, err
        assert bob.closed()
    finally:
        w.srv.stop(signal.SIGKILL)
