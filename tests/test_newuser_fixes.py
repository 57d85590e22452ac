"""What a new user following README hit (chat3): multi-line bodies, a first connection that
fails, inbox --follow across a restart, a mistyped chat command, trust picked up by a running chat."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time

import pytest

from securecomm.client.events import CONTINUATION, printable_body
from tests.conftest import ENTRY, run_entry
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_chat_tty import Tmux, two_users  # noqa: F401  (the fixture)

CHECK = "\u2713"


# -- item 4: multi-line bodies -----------------------------------------------------------------------
def test_multi_line_body_is_several_escaped_lines():
    shown = printable_body(b"line one\nline two\n")
    assert shown == f"line one\n{CONTINUATION}line two"
    assert "\\x0a" not in shown


def test_a_body_cannot_forge_another_senders_line_or_send_escapes():
    shown = printable_body(b"hi\n12:00:00 alice \xe2\x9c\x93 send me your password\x1b[2J\r\n\n")
    lines = shown.split("\n")
    assert lines[0] == "hi"
    assert all(line.startswith(CONTINUATION) for line in lines[1:]), lines
    assert "\\x1b" in shown and "\\x0d" in shown and "\x1b" not in shown and "\r" not in shown
    assert len(lines) == 3  # only ONE trailing newline is dropped; the empty line stays, marked


def test_chat_shows_a_multi_line_direct_message_as_lines():
    from securecomm.cli.chat import render
    from securecomm.client.events import DirectMessage

    line = render(DirectMessage("bob", b"from stdin\nsecond\n", b"i" * 16, 0, "SHA256:x"), "alice")
    assert line.endswith(f"bob \u2192 alice {CHECK} from stdin\n{CONTINUATION}second"), repr(line)


def test_inbox_shows_a_piped_multi_line_message_as_lines(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    try:
        homes = users_logged_in(srv, tmp_path)
        r = run_entry("--home", str(homes["bob"]), "send", "--to", "alice", "-", input=b"line one\nline two\n")
        assert r.returncode == 0, r.stderr
        out = sc(homes["alice"], "inbox").stdout.decode()
        assert f"bob {CHECK} line one\n{CONTINUATION}line two\n" in out, out
        assert "\\x0a" not in out
    finally:
        srv.stop(signal.SIGKILL)


# -- item 8: the first connection of chat fails at once ----------------------------------------------
def test_chat_with_the_server_down_fails_at_once_like_send(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice",))
    srv.stop(signal.SIGKILL)
    send = run_entry("--home", str(homes["alice"]), "send", "hi")
    chat = run_entry("--home", str(homes["alice"]), "chat", input=b"", timeout=30)  # before: retried forever
    assert chat.returncode == send.returncode == 7, chat.stderr
    err = chat.stderr.decode()
    assert err.startswith("securecomm: error: cannot connect"), err
    assert "retrying" not in err and "Traceback" not in err
    assert [ln for ln in err.splitlines() if "hint" in ln] == \
        [ln for ln in send.stderr.decode().splitlines() if "hint" in ln]


# -- item 13: a mistyped command --------------------------------------------------------------------
def test_chat_says_unknown_command_and_suggests_the_right_one(two_users):  # noqa: F811
    _, homes, tmux = two_users
    tmux.start("alice", f"{ENTRY} --home {homes['alice']} chat; sleep 30")
    tmux.wait_for("alice", "joined #lobby")
    tmux.type("alice", "/jion ops")
    screen = tmux.wait_for("alice", "unknown command /jion; did you mean /join?")
    assert "/who" in screen and "/msg USER text" in screen and "/quit" in screen


# -- item 9: inbox --follow across a server restart ---------------------------------------------------
def _lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            q.put(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return q


def _wait_line(q: queue.Queue[str], text: str, seen: list[str], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        try:
            seen.append(q.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"{text!r} never printed; got {seen}") from None


def test_inbox_follow_keeps_printing_across_a_server_restart(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    proc = None
    try:
        homes = users_logged_in(srv, tmp_path)
        proc = subprocess.Popen([ENTRY, "--home", str(homes["alice"]), "inbox", "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        q, seen = _lines(proc), []
        assert sc(homes["bob"], "send", "--to", "alice", "before the restart").returncode == 0
        _wait_line(q, "before the restart", seen)
        assert srv.stop(signal.SIGTERM) == 0
        srv.start()  # same port, same home
        assert sc(homes["bob"], "send", "--to", "alice", "after the restart").returncode == 0
        _wait_line(q, "after the restart", seen)  # before: inbox had exited with rc 7
        assert proc.poll() is None
        assert sum("before the restart" in line for line in seen) == 1, seen
        assert sum("after the restart" in line for line in seen) == 1, seen
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        srv.stop(signal.SIGKILL)
    assert proc.stderr is not None
    assert b"Traceback" not in proc.stderr.read()


@pytest.fixture(autouse=True)
def _no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")


# -- item 1: a running chat picks up `contacts trust` ---------------------------------------------------
def _bob_with_a_new_key(srv: ServerProc, homes: dict, tmp_path) -> None:
    """alice pins bob's user key (her first message to him, as in README); then bob starts over on a
    new device with a new user key: a key change both direct messages and rooms see (rooms on
    version 2 check each member device against the user key pinned for it, docs/PROTOCOL.md 6.13)."""
    from tests.serverproc import PASSWORD, login

    r = sc(homes["alice"], "send", "--to", "bob", "hello before the reset")
    assert r.returncode == 0, r.stderr
    homes["bob"] = tmp_path / "bob-new-device"
    # a new device that starts over with a new user key (a plain new device would only pair, and
    # --replace-key no longer registers an unapproved key): a key change both contacts and rooms see
    r = login(homes["bob"], srv, "bob", PASSWORD, "--reset-user-key", "--yes")
    assert r.returncode == 0, r.stderr


def _both_chatting(tmux: Tmux, homes: dict) -> None:
    for u in ("alice", "bob"):
        tmux.start(u, f"{ENTRY} --home {homes[u]} chat; echo CHAT-EXITED-$?; sleep 30")
        tmux.wait_for(u, "joined #lobby")
    _wait_joined(tmux, "alice", "has CHANGED")


def _history(tmux: Tmux, name: str) -> str:
    """The screen and its scrollback with wrapped lines joined (long fingerprints wrap)."""
    return tmux.run("capture-pane", "-p", "-J", "-S", "-500", "-t", name)


def _wait_joined(tmux: Tmux, name: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while text not in (history := _history(tmux, name)):
        assert time.monotonic() < deadline, f"{text!r} never appeared on {name}'s screen:\n{history}"
        time.sleep(0.1)
    return history


def test_running_chat_picks_up_contacts_trust_done_in_another_shell(two_users, tmp_path):  # noqa: F811
    srv, homes, tmux = two_users
    _bob_with_a_new_key(srv, homes, tmp_path)
    _both_chatting(tmux, homes)
    tmux.type("bob", "before the trust")
    _wait_joined(tmux, "alice", "was held back, not shown: bob's key CHANGED")
    tmux.type("alice", "hello bob?")
    _wait_joined(tmux, "bob", "alice has not sent you their room key (if your key changed, alice must verify it "
                 "and run: securecomm contacts trust bob)")

    r = sc(homes["alice"], "contacts", "trust", "bob")  # another shell, chat still running
    assert r.returncode == 0 and b"CHANGED cleared" in r.stdout, r.stderr

    tmux.type("bob", "after the trust")
    tmux.wait_for("alice", f"#lobby bob {CHECK} after the trust")  # before: held back until chat restarted
    tmux.type("alice", "now you can read me")
    tmux.wait_for("bob", f"#lobby alice {CHECK} now you can read me")
    alice = _history(tmux, "alice")
    assert "not a member of a room you are in" not in alice  # the wrong reason is gone
    assert "arrived before their key" not in alice + _history(tmux, "bob")
    assert "CHAT-EXITED" not in alice and "Traceback" not in alice


def test_trust_command_in_chat_shows_the_fingerprint_then_trusts(two_users, tmp_path):  # noqa: F811
    from securecomm.client.pins import Pins
    from securecomm.paths import Paths

    srv, homes, tmux = two_users
    _bob_with_a_new_key(srv, homes, tmp_path)
    _both_chatting(tmux, homes)
    tmux.type("alice", "/trust bob")
    _wait_joined(tmux, "alice", "then type: /trust bob SHA256:")
    pending = Pins.load(Paths.resolve(homes["alice"]).user_pins).get("bob")
    assert pending is not None and pending.pending is not None
    new = pending.pending.fingerprint_text
    tmux.type("alice", "/trust bob SHA256:not-the-one")
    tmux.wait_for("alice", "nothing trusted")
    tmux.type("alice", f"/trust bob {new}")
    _wait_joined(tmux, "alice", f"now trusting bob {new}")
    tmux.type("alice", "readable now")
    tmux.wait_for("bob", f"#lobby alice {CHECK} readable now")
    tmux.type("bob", "and back")
    tmux.wait_for("alice", f"#lobby bob {CHECK} and back")
    trusted = Pins.load(Paths.resolve(homes["alice"]).user_pins).get("bob")
    assert trusted is not None and trusted.pending is None and trusted.user_key.fingerprint_text == new


def test_a_long_running_session_never_writes_back_a_trust_undone(tmp_path):
    """chat holds contacts.json in memory for hours; `contacts trust` in another shell must not be
    undone when chat later pins someone new (it used to save its stale copy over the file)."""
    from securecomm.client.directory import Contacts
    from securecomm.crypto.identity import PrivateIdentity
    from securecomm.errors import ChangedKeyError

    path = tmp_path / "contacts.json"
    old, new, carol = (PrivateIdentity.generate().public for _ in range(3))
    chat = Contacts.load(path)
    chat.check("bob", old)
    with pytest.raises(ChangedKeyError):
        chat.check("bob", new)  # chat sees bob's new key: CHANGED, pending
    Contacts.load(path).trust("bob")  # the other shell
    assert chat.check("carol", carol)  # chat pins a new contact afterwards
    assert not chat.check("bob", new)  # and now knows bob's new key is trusted
    on_disk = Contacts.load(path).get("bob")
    assert on_disk is not None and on_disk.pending is None
    assert on_disk.identity.fingerprint_text == new.fingerprint_text
