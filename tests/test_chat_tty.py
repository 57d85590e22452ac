"""`securecomm chat` in a real terminal (tmux), driven as a person would."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import ENTRY
from tests.serverproc import ServerProc, users_logged_in

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


class Tmux:
    def __init__(self) -> None:
        self.socket = f"sc-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False,
                              timeout=10).stdout

    def start(self, name: str, command: str) -> None:
        self.run("new-session", "-d", "-s", name, "-x", "120", "-y", "30", command)

    def type(self, name: str, text: str, enter: bool = True) -> None:
        self.run("send-keys", "-t", name, "-l", text)
        if enter:
            self.run("send-keys", "-t", name, "Enter")

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen(name)
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared on {name}'s screen:\n{self.screen(name)}")

    def kill(self) -> None:
        self.run("kill-server")


@pytest.fixture
def two_users(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path)
    tmux = Tmux()
    yield srv, homes, tmux
    tmux.kill()
    srv.stop(signal.SIGKILL)


def test_two_people_chat_in_a_room_and_directly(two_users):
    _, homes, tmux = two_users
    for u in ("alice", "bob"):  # alice first, so that she sees bob arrive
        tmux.start(u, f"{ENTRY} --home {homes[u]} chat --room lobby; echo CHAT-EXITED-$?; sleep 30")
        tmux.wait_for(u, "joined #lobby")
    tmux.wait_for("alice", "* bob joined #lobby")

    tmux.type("alice", "good morning, bob")
    screen = tmux.wait_for("bob", "#lobby alice \u2713 good morning, bob")

    tmux.type("bob", "/msg alice this one is just for you")
    tmux.wait_for("alice", "[dm] bob \u2192 alice \u2713 this one is just for you")
    tmux.wait_for("bob", "alice received")  # the signed delivery receipt

    # a half-typed line survives an incoming message
    tmux.type("alice", "still typ", enter=False)
    tmux.type("bob", "interrupting")
    screen = tmux.wait_for("alice", "#lobby bob \u2713 interrupting")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[-1] == "> still typ"

    tmux.run("send-keys", "-t", "alice", "C-u")
    tmux.run("send-keys", "-t", "alice", "C-d")
    tmux.wait_for("alice", "CHAT-EXITED-0")
    tmux.wait_for("bob", "* alice left #lobby")
    tmux.run("send-keys", "-t", "bob", "C-c")  # README's exit-code table: 130 is "interrupted: Ctrl-C"
    tmux.wait_for("bob", "CHAT-EXITED-130")
    assert "securecomm: error: interrupted" in tmux.screen("bob")
    assert "Traceback" not in tmux.screen("alice") + tmux.screen("bob")


def test_chat_reconnects_and_resends_what_was_typed_offline(two_users):
    srv, homes, tmux = two_users
    tmux.start("alice", f"{ENTRY} --home {homes['alice']} chat; sleep 30")
    tmux.wait_for("alice", "joined #lobby")
    tmux.type("alice", "/who")
    tmux.wait_for("alice", "in #lobby: alice")
    srv.stop(signal.SIGKILL)
    tmux.wait_for("alice", "connection lost")
    tmux.type("alice", "/msg bob typed while the server was down")
    tmux.wait_for("alice", "queued until reconnected")
    srv.start()  # same port
    tmux.wait_for("alice", "joined #lobby", timeout=40)
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run([ENTRY, "--home", str(homes["bob"]), "inbox"], capture_output=True, timeout=30,
                           check=False)
        if b"typed while the server was down" in r.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"alice \xe2\x9c\x93 typed while the server was down" in r.stdout


def test_first_contact_asks_before_trusting(two_users, tmp_path):
    srv, _, tmux = two_users
    stranger = tmp_path / "stranger"
    from securecomm.crypto.certs import fingerprint, load_cert

    ca_fp = fingerprint(load_cert((srv.home / "tls" / "ca.pem").read_bytes()))  # the CA's: what serve printed
    # --replace-key: alice's first device is already registered (one device per user)
    tmux.start("s", f"{ENTRY} --home {stranger} user login alice --server {srv.address} --replace-key; "
               "echo LOGIN-EXITED-$?; sleep 30")
    screen = tmux.wait_for("s", "Trust it and remember it in known_servers?")
    assert ca_fp in screen.replace("\n", "")
    tmux.type("s", "y")
    tmux.wait_for("s", "password")
    tmux.type("s", "correct horse battery")
    tmux.wait_for("s", "LOGIN-EXITED-0")
    assert ca_fp in (stranger / "known_servers").read_text()


def test_join_leave_churn_prints_a_couple_of_lines_not_one_per_event(two_users):
    """The attacker's t_churn.py: bob joins and leaves #lobby 300 times in a burst. alice's chat shows
    his first change and one summary line, not 600 lines, and her next line is still delivered."""
    import asyncio

    from securecomm.cli.context import State
    from securecomm.client.login import connect_profile
    from securecomm.crypto import identity as ident

    _, homes, tmux = two_users
    tmux.start("alice", f"{ENTRY} --home {homes['alice']} chat --room lobby; echo CHAT-EXITED-$?; sleep 30")
    tmux.wait_for("alice", "joined #lobby")

    async def churn() -> None:
        state = State(home=str(homes["bob"]))
        client, _ = await connect_profile(state.paths, ident.load(state.paths.identity_key("default")))
        async with client:
            await asyncio.gather(*[client.request(op, room="lobby") for _ in range(300) for op in ("join", "leave")])

    asyncio.run(churn())
    deadline = time.monotonic() + 60
    while (shown := _changes_shown(tmux, "alice", "bob")) < 600:  # every event, in a line or a summary
        assert time.monotonic() < deadline, tmux.run("capture-pane", "-p", "-S", "-2000", "-t", "alice")
        time.sleep(0.1)
    history = tmux.run("capture-pane", "-p", "-S", "-2000", "-t", "alice")
    lines = [line for line in history.splitlines() if "bob" in line]
    assert shown == 600 and 2 <= len(lines) <= 6, history  # not 600 lines (a summary at most every 2 s)
    assert lines[-1].endswith("(now gone)"), lines
    tmux.type("alice", "/who")
    tmux.wait_for("alice", "in #lobby: alice")  # chat goes on
    assert "CHAT-EXITED" not in tmux.screen("alice")


def _changes_shown(tmux: Tmux, name: str, user: str) -> int:
    """Joins/leaves of `user` on the screen's history: one per plain line, N per summary line."""
    import re

    total = 0
    for line in tmux.run("capture-pane", "-p", "-S", "-2000", "-t", name).splitlines():
        if m := re.search(rf"\* {user} joined and left #\S+ repeatedly: (\d+) more", line):
            total += int(m.group(1))
        elif re.search(rf"\* {user} (joined|left) #", line):
            total += 1
    return total
