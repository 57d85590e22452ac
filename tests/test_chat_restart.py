"""`chat` across server restarts and on every way out: terminal state, reconnects, room lines typed offline.

tmux runs the real entry point in a real terminal; the server is a real subprocess."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from securecomm.cli.context import State
from securecomm.client import chat as chatsession
from securecomm.client.chat import BACKOFF_MAX, ChatSession, Command, Info, Say
from securecomm.client.events import Alert, Membership
from securecomm.crypto import identity as ident
from tests.conftest import ENTRY, run_entry
from tests.test_chat_tty import pytestmark, two_users  # noqa: F401 - tmux skip mark and fixture
from tests.test_messaging import _messenger, _until, world  # noqa: F401 - `world` is a fixture

CHECK = "\u2713"


def wait_until(tmux, name: str, pred, what: str, timeout: float = 30) -> str:
    """Poll the screen until pred(screen) holds (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux.screen(name)
        if pred(screen):
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened on {name}'s screen:\n{tmux.screen(name)}")


def start_chat(tmux, name: str, home, tag: str = "") -> None:
    tmux.start(name, f"{ENTRY} --home {home} chat; echo CHAT-EXITED{tag}-$?; sleep 60")


# -- item 4: the terminal is restored whichever way chat ends ------------------------------------
@pytest.mark.parametrize("way", ["quit", "ctrl-d", "ctrl-c", "server-error"])
def test_terminal_settings_are_restored_on_every_exit(two_users, tmp_path, way):  # noqa: F811
    srv, homes, tmux = two_users
    before, after = tmp_path / "stty-before", tmp_path / "stty-after"
    tmux.start("alice", f"stty -g > {before}; {ENTRY} --home {homes['alice']} chat; rc=$?; "
               f"stty -g > {after}; echo CHAT-EXITED-$rc; sleep 60")
    tmux.wait_for("alice", "joined #lobby")
    tmux.type("alice", "half a line", enter=False)
    expected = 0
    if way == "quit":
        tmux.run("send-keys", "-t", "alice", "C-u")
        tmux.type("alice", "/quit")
    elif way == "ctrl-d":
        tmux.run("send-keys", "-t", "alice", "C-u")
        tmux.run("send-keys", "-t", "alice", "C-d")
    elif way == "ctrl-c":  # README: each way out leaves the same way; Ctrl-C then exits 130
        tmux.run("send-keys", "-t", "alice", "C-c")
        expected = 130
    else:  # the server comes back without alice's account: chat ends with the server's error
        assert srv.stop(signal.SIGTERM) == 0
        assert run_entry("--home", str(srv.home), "user", "remove", "alice", "--yes").returncode == 0
        srv.start()
        expected = 5
    screen = tmux.wait_for("alice", "CHAT-EXITED-", timeout=40)
    assert f"CHAT-EXITED-{expected}" in screen
    assert before.read_text() == after.read_text()  # echo, canonical mode and the rest as they were
    assert "Traceback" not in screen
    if way == "server-error":
        assert "securecomm: error: server: " in screen


# -- item 2: a planned restart is a retryable close ------------------------------------------------
def test_sigterm_restart_reconnects_with_capped_backoff(two_users):  # noqa: F811
    srv, homes, tmux = two_users
    for u in ("alice", "bob"):
        start_chat(tmux, u, homes[u])
        tmux.wait_for(u, "joined #lobby")
    tmux.wait_for("alice", "* bob joined #lobby")
    assert srv.stop(signal.SIGTERM) == 0
    for u in ("alice", "bob"):
        tmux.wait_for(u, "server is shutting down; reconnecting")
    # let the backoff grow past its cap before the server comes back
    wait_until(tmux, "alice", lambda s: s.count("retrying in") >= 5, "five reconnect attempts", 60)
    srv.start()
    for u in ("alice", "bob"):
        wait_until(tmux, u, lambda s: s.count("joined #lobby:") >= 2, "a second join", 30)
    tmux.type("alice", "/who")
    wait_until(tmux, "alice", lambda s: re.search(r"in #lobby: (alice, bob|bob, alice)", s) is not None,
               "bob back in the room")
    tmux.type("alice", "after the restart")
    tmux.wait_for("bob", f"#lobby alice {CHECK} after the restart")
    screen = tmux.screen("alice")
    delays = [float(d) for d in re.findall(r"retrying in (\d+\.\d+)s", screen)]
    assert len(delays) >= 5 and max(delays) <= BACKOFF_MAX, delays
    assert "CHAT-EXITED" not in screen + tmux.screen("bob")
    assert "cannot connect (cannot connect" not in screen  # item 13: said once
    assert "cannot connect to " in screen


# -- item 3: room lines typed during an outage ---------------------------------------------------------
def test_room_line_typed_offline_reaches_a_member_who_returns_later(two_users):  # noqa: F811
    srv, homes, tmux = two_users
    for u in ("alice", "bob"):
        start_chat(tmux, u, homes[u])
        tmux.wait_for(u, "joined #lobby")
    tmux.wait_for("alice", "* bob joined #lobby")
    srv.stop(signal.SIGKILL)
    for u in ("alice", "bob"):
        tmux.wait_for(u, "connection lost")
    tmux.type("bob", "/quit")  # bob is away for longer than the outage
    tmux.wait_for("bob", "CHAT-EXITED-0")
    tmux.type("alice", "typed while the server was down")
    tmux.wait_for("alice", "queued until reconnected")
    srv.start()
    tmux.wait_for("alice", "holding 1 line typed while disconnected until these members are back in #lobby: bob")
    start_chat(tmux, "bob2", homes["bob"])
    tmux.wait_for("bob2", f"#lobby alice {CHECK} typed while the server was down", timeout=30)
    assert "NOT delivered" not in tmux.screen("alice")


def test_room_line_a_member_never_gets_is_named(world, monkeypatch):  # noqa: F811
    srv, homes = world
    monkeypatch.setattr(chatsession, "REJOIN_WAIT", 1.0)  # bob stays away; do not wait 20 s for him

    async def go():
        events: list = []
        state = State(home=str(homes["alice"]))
        me = ident.load(state.paths.identity_key("default"))
        session = ChatSession(state.paths, me, "alice", "lobby", events.append)
        lines: asyncio.Queue[Command | None] = asyncio.Queue()
        run = asyncio.create_task(session.run(lines))
        bob = None
        try:
            await _until(lambda: any(isinstance(e, Info) and e.text.startswith("joined #lobby") for e in events), 30)
            bob = await _messenger(homes["bob"], [])
            await bob.join("lobby")
            await _until(lambda: Membership("lobby", "bob", "joined") in events, 30)
            srv.stop(signal.SIGKILL)
            await _until(lambda: any(isinstance(e, Alert) and "connection lost" in e.text for e in events), 30)
            lines.put_nowait(Say("nobody will read this"))
            await _until(lambda: any(isinstance(e, Info) and "queued" in e.text for e in events), 30)
            srv.start()
            await _until(lambda: any(isinstance(e, Alert) and "NOT delivered to bob" in e.text
                                     and "nobody will read this" in e.text for e in events), 30)
            # sent to the room (nobody else there), and the user was told; the warning comes just
            # before the send, so wait for its receipt rather than assume it is in
            await _until(lambda: session.outbox == [], 30)
            lines.put_nowait(None)
            await asyncio.wait_for(run, 30)
        finally:
            run.cancel()
            if bob is not None:
                bob.pump.cancel()
                await bob.client.close()

    asyncio.run(go())


# -- item 13: a bad room name is called a room name ------------------------------------------------
def test_bad_room_name_speaks_of_a_room(tmp_path):
    r = run_entry("--home", str(tmp_path / "h"), "chat", "--room", "bad room")
    assert r.returncode == 2
    assert r.stderr.startswith(b"securecomm: error: room name 'bad room' must be")
    assert b"user name" not in r.stderr


def test_chat_reads_piped_stdin_without_a_terminal(world):  # noqa: F811
    _, homes = world
    r = run_entry("--home", str(homes["alice"]), "chat", input=b"/who\n")  # then end of input: quit
    assert r.returncode == 0, r.stderr
    assert b"in #lobby: alice" in r.stdout
    assert r.stdout.rstrip().endswith(b"bye")
    assert b"\x1b[?" not in r.stdout  # no terminal modes were touched: there is no terminal
