"""chat's slash-command grammar (cli/slash.py) and `/msg USER text`, without a socket: one grammar online
and while disconnected.

The server folds user names to ASCII lower case (store.db.normalise_name), so `/msg Bob` must
reach bob in both paths; before, only the online path lower-cased and a queued `/msg Bob` went
out addressed to "Bob".
"""

from __future__ import annotations

import pytest

from securecomm.cli.slash import MSG_USAGE, TRUST_USAGE, parse_line, parse_msg
from securecomm.client.chat import ChatSession, Info, Invalid, Join, Msg, Pending, Quit, Say, Trust, Who
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
    s._queue_line(parse_line("/msg Bob hello"))
    assert s.outbox == [Pending("dm", "bob", b"hello")]
    assert shown == [Info("(queued until reconnected)")]


def test_a_msg_without_text_while_disconnected_queues_nothing():
    s, shown = session()
    s._queue_line(parse_line("/msg bob "))
    assert s.outbox == []
    assert shown == [Info("usage: /msg USER text")]


@pytest.mark.parametrize(("line", "command"), [
    ("hello there ", Say("hello there ")),  # room text as typed
    ("", Say("")),
    ("/quit", Quit()),
    (" /quit ", Quit()),
    ("/join  Ops ", Join("Ops")),  # the room rule is ChatSession's (room_name), not the grammar's
    ("/who", Who()),
    ("/msg Bob hi", Msg("bob", "hi")),
    ("/msg bob", Invalid(MSG_USAGE, offline_too=True)),
    ("/trust Bob", Trust("bob", None)),
    ("/trust bob SHA256:abc", Trust("bob", "SHA256:abc")),
    ("/trust bob a b", Invalid(TRUST_USAGE)),
    ("/trust b@d", Invalid(TRUST_USAGE)),
])
def test_lines_parse_into_commands(line, command):
    assert parse_line(line) == command


def test_an_unknown_command_names_it_and_suggests_one():
    cmd = parse_line("/jion lobby")
    assert isinstance(cmd, Invalid) and not cmd.offline_too
    assert cmd.text.startswith("unknown command /jion; did you mean /join?")


def test_a_command_typed_while_disconnected_is_not_queued():
    s, shown = session()
    s._queue_line(parse_line("/who"))
    s._queue_line(parse_line("hi room"))
    assert s.outbox == [Pending("room", "lobby", b"hi room")]
    assert shown[0] == Info("(not connected: only text and /msg are queued)")


def test_help_lists_the_commands_even_offline():
    """The new-user check: `/help` was answered "unknown command /help"."""
    from securecomm.cli.slash import COMMANDS, parse_line
    from securecomm.client.chat import Invalid

    for typed in ("/help", " /help ", "/?"):
        cmd = parse_line(typed)
        assert isinstance(cmd, Invalid) and cmd.offline_too and "unknown" not in cmd.text
        assert all(c in cmd.text for c in COMMANDS)


def _typed_as_the_connection_drops(line: object) -> tuple[ChatSession, list[object], bool | BaseException]:
    """Run chat's loop while `line` is typed and the connection ends in the same turn: (session, shown,
    the loop's result or the error it raised)."""
    import asyncio

    from securecomm.errors import NetworkError

    async def main() -> tuple[ChatSession, list[object], bool | BaseException]:
        s, shown = session()
        lines: asyncio.Queue[object] = asyncio.Queue()
        gone = asyncio.Event()

        async def connection() -> None:
            await gone.wait()
            raise NetworkError("connection lost")

        pump = asyncio.create_task(connection())

        async def typed_as_it_drops() -> None:
            await asyncio.sleep(0)
            lines.put_nowait(line)  # both wake in the same turn
            gone.set()

        asyncio.get_running_loop().create_task(typed_as_it_drops())
        try:
            return s, shown, await s._loop(lines, pump)  # type: ignore[arg-type]
        except NetworkError as e:
            return s, shown, e

    return asyncio.run(main())


def test_quit_typed_as_the_connection_drops_quits():
    """The new user's check (stop 26): /quit typed as the server went down was queued as "not connected:
    only text and /msg are queued" and ignored; chat reconnected, and the next thing typed (a shell
    command) went to the room. Both ending in the same turn of the loop, /quit wins."""
    _, shown, outcome = _typed_as_the_connection_drops(Quit())
    assert outcome is True
    assert not any("not connected" in getattr(i, "text", "") for i in shown)


def test_a_line_typed_as_the_connection_drops_is_queued_not_lost():
    from securecomm.errors import NetworkError

    s, _, outcome = _typed_as_the_connection_drops(parse_line("/msg bob still there?"))
    assert isinstance(outcome, NetworkError)  # the connection's end is still reported: chat reconnects
    assert s.outbox == [Pending("dm", "bob", b"still there?")]
