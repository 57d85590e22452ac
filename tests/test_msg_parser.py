"""chat's `/msg USER text` parser, without a socket: one grammar online and while disconnected.

The server folds user names to ASCII lower case (store.db.normalise_name), so `/msg Bob` must
reach bob in both paths; before, only the online path lower-cased and a queued `/msg Bob` went
out addressed to "Bob".
"""

from __future__ import annotations

import pytest

from securecomm.client.chat import ChatSession, Info, Pending, parse_msg
from securecomm.store.db import normalise_name


@pytest.mark.parametrize(("line", "parsed"), [
    ("/msg bob hi", ("bob", "hi")),
    ("/msg Bob hi there", ("bob", "hi there")),
    ("/msg BOB  two  spaces ", ("bob", " two  spaces ")),  # the text is kept as typed
    ("/msg bob", None),
    ("/msg bob ", None),
    ("/msg  hi", None),  # no user
])
def test_msg_lines_parse_as_the_server_names_users(line, parsed):
    assert parse_msg(line) == parsed
    if parsed is not None:
        assert parsed[0] == normalise_name(line.split(" ", 2)[1])


def test_a_look_alike_name_is_not_folded_into_another_user():
    """str.lower() would fold KELVIN SIGN into "k" and send to kate; the server refuses the name instead."""
    user, _ = parse_msg("/msg \u212aate hi")
    assert user == "\u212aate" and user != "kate"


def session() -> tuple[ChatSession, list[object]]:
    shown: list[object] = []
    return ChatSession(None, None, "alice", "lobby", shown.append), shown  # type: ignore[arg-type]


def test_a_msg_typed_while_disconnected_is_queued_for_the_folded_name():
    s, shown = session()
    s._queue_line("/msg Bob hello")
    assert s.outbox == [Pending("dm", "bob", b"hello")]
    assert shown == [Info("(queued until reconnected)")]


def test_a_msg_without_text_while_disconnected_queues_nothing():
    s, shown = session()
    s._queue_line("/msg bob ")
    assert s.outbox == []
    assert shown == [Info("usage: /msg USER text")]
