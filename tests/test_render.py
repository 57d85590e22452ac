"""Text from other people or from the server is shown, never obeyed by the terminal."""

from __future__ import annotations

import pytest

from securecomm.cli.chat import render
from securecomm.client.connection import error_from
from securecomm.client.events import Alert, DeliveryReceipt, DirectMessage, Membership, RoomText
from securecomm.wire import protocol as P

EVIL = "\x1b[2J\x1b]0;pwned\x07\r"


@pytest.mark.parametrize("event", [
    RoomText("lobby" + EVIL, "mallory" + EVIL, EVIL.encode(), b"i" * 16, 0),
    DirectMessage("mallory" + EVIL, EVIL.encode(), b"i" * 16, 0, "SHA256:x"),
    DeliveryReceipt("bob" + EVIL, b"i" * 16, True),
    Membership("lobby", "eve" + EVIL, "joined"),
    Membership("lobby" + EVIL, "eve" + EVIL, "left", 499),
    Alert("server said " + EVIL),
])
def test_chat_lines_have_no_control_characters(event, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    line = render(event, "me")
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)
    assert "\\x1b" in line  # shown, escaped


def test_server_error_text_is_escaped():
    err = error_from(P.Error(int(P.ErrorCode.FORBIDDEN), "no" + EVIL))
    assert "\x1b" not in err.message and "\\x1b" in err.message


def test_a_burst_of_joins_and_leaves_is_one_line(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    line = render(Membership("lobby", "mallory", "left", 3999), "me")
    assert line.endswith("* mallory joined and left #lobby repeatedly: 3999 more joins/leaves (now gone)"), line
