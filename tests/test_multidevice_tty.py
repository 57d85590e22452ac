"""Alice on two devices and Bob on one, chatting with `securecomm chat` on terminals (tmux), with Alice's
second device added and then removed mid-conversation (issue 12; docs/PROTOCOL.md 6.4, 6.7, 6.13)."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from tests.conftest import ENTRY
from tests.serverproc import ServerProc, login, sc, users_logged_in
from tests.test_chat_tty import Tmux
from tests.test_multidevice_cli import CODE, fingerprint_in

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


@pytest.fixture
def world(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    homes = users_logged_in(srv, tmp_path, ("alice", "bob"))
    homes["phone"] = tmp_path / "alice-phone"
    tmux = Tmux()
    yield srv, homes, tmux
    tmux.kill()
    srv.stop(signal.SIGKILL)


def _chat(tmux: Tmux, name: str, home, room: str = "team") -> None:
    # all three in #team: room lines reach every device too (room keys on version 2, per device)
    tmux.start(name, f"NO_COLOR=1 {ENTRY} --home {home} chat --room {room}; echo CHAT-EXITED-$?; sleep 30")
    tmux.wait_for(name, f"joined #{room}")


def test_two_devices_and_one_chat_while_a_device_comes_and_goes(world):
    srv, homes, tmux = world
    _chat(tmux, "laptop", homes["alice"])
    _chat(tmux, "bob", homes["bob"])
    tmux.type("bob", "/msg alice hello laptop")
    tmux.wait_for("laptop", "hello laptop")
    tmux.type("laptop", "/msg bob hi bob")
    tmux.wait_for("bob", "hi bob")

    # a second device joins mid-conversation: code on the phone, approved from another shell, paired
    r = login(homes["phone"], srv, "alice")
    assert r.returncode == 0, r.stderr
    code = CODE.search(r.stderr)
    assert code, r.stderr
    assert sc(homes["alice"], "devices", "approve", code.group(1).decode(), "--fingerprint",
              fingerprint_in(r.stderr)).returncode == 0
    # NOTICE device_added, shown in the running chat, loudly and with what to do if it was not the user
    screen = tmux.wait_for("laptop", "If you did not approve it, remove it now")
    assert "a NEW DEVICE" in screen and "--reset-user-key" in screen
    r = login(homes["phone"], srv, "alice")
    assert r.returncode == 0 and b"paired" in r.stderr, r.stderr
    _chat(tmux, "phone", homes["phone"])
    tmux.type("phone", "phone speaks in the room")  # keys of the two others came when it joined
    tmux.wait_for("bob", "phone speaks in the room")
    tmux.wait_for("laptop", "phone speaks in the room")
    tmux.type("bob", "bob speaks in the room")
    tmux.wait_for("phone", "bob speaks in the room")
    tmux.wait_for("laptop", "bob speaks in the room")

    tmux.type("bob", "/msg alice to every device")
    tmux.wait_for("laptop", "to every device")
    tmux.wait_for("phone", "to every device")
    tmux.type("phone", "/msg bob from the phone")
    tmux.wait_for("bob", "from the phone")
    screen = tmux.wait_for("laptop", "from the phone")  # the laptop's copy of what the phone sent
    assert "(sent)" in screen
    tmux.type("laptop", "/msg bob from the laptop")
    tmux.wait_for("bob", "from the laptop")
    assert "(sent)" in tmux.wait_for("phone", "from the laptop")

    # removed mid-conversation: the phone's chat is closed, and gets nothing more
    phone = next(d for d in json.loads(sc(homes["alice"], "devices", "--json").stdout) if not d["this"])
    assert sc(homes["alice"], "devices", "remove", phone["id"], "--yes").returncode == 0
    tmux.wait_for("phone", "CHAT-EXITED-")
    tmux.wait_for("laptop", "was removed from your account")
    tmux.type("bob", "/msg alice after the removal")
    tmux.wait_for("laptop", "after the removal")
    assert "after the removal" not in tmux.screen("phone")
    tmux.type("laptop", "/msg bob still here")
    tmux.wait_for("bob", "still here")
    tmux.type("bob", "room after the removal")  # a new key first: the phone had the old one
    tmux.wait_for("laptop", "room after the removal")
    for name in ("laptop", "bob"):
        assert "REJECTED" not in tmux.screen(name) and "\u26a0" not in tmux.screen(name), tmux.screen(name)
