"""Chat sends in the background (attack round 2, item 7): the other side of not blocking /quit.

A piped `/msg` followed at once by end of input must still be sent and receipted: quitting
waits QUIT_GRACE for receipts still due, and a working server answers well within it.
"""

from __future__ import annotations

import signal

from tests.conftest import run_entry
from tests.serverproc import ServerProc, sc, users_logged_in


def test_piped_msg_then_end_of_input_is_still_delivered(tmp_path):
    srv = ServerProc(tmp_path / "srv").start()
    try:
        homes = users_logged_in(srv, tmp_path)
        chat = run_entry("--home", str(homes["alice"]), "chat", input=b"/msg bob piped, then end of input\n",
                         env={"NO_COLOR": "1"})
        assert chat.returncode == 0, chat.stderr
        assert b"quit before the server confirmed" not in chat.stdout, chat.stdout
        out = sc(homes["bob"], "inbox").stdout.decode()
        assert "alice \u2713 piped, then end of input" in out, out
    finally:
        srv.stop(signal.SIGKILL)
