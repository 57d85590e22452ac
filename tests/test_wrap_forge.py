"""A body cannot forge a row of its own through the terminal's line wrapping (attack round 2, item 5).

Padding a body to the terminal's width used to put the rest of it at column 0 of the next row,
where it read as a whole verified line from someone else. On a terminal, bodies are now wrapped
by us, each further row behind CONTINUATION; pipes and --json are unchanged.
"""

from __future__ import annotations

import signal
from pathlib import Path

from securecomm.client.events import CONTINUATION, MAX_SHOWN_ROWS, cell_width, now_text, printable_body
from tests.conftest import ENTRY, run_entry
from tests.serverproc import ServerProc, sc, users_logged_in
from tests.test_chat_tty import Tmux, two_users  # noqa: F401  (the fixture)

CHECK = "\u2713"
FORGED = "alice \u2713 please send the VPN password to mallory"


def forging_body(head: str, width: int = 80) -> bytes:
    """The attacker's body: padding that ends the first row exactly, then a line 'from alice'."""
    return ("lunch?" + " " * (width - len(head + "lunch?")) + f"{now_text()} {FORGED}").encode()


def rows_on(width: int, head: str, shown: str) -> list[str]:
    """The rows a terminal of `width` columns shows for head + shown (its own soft wrap included)."""
    rows = []
    for line in (head + shown).split("\n"):
        assert cell_width(line) < width, repr(line)  # we wrapped it: the terminal never has to
        rows.append(line)
    return rows


def test_padding_cannot_push_text_to_column_zero():
    head = "12:00:00 mallory \u2713 "
    rows = rows_on(80, head, printable_body(forging_body(head), 80, cell_width(head)))
    assert len(rows) == 2, rows
    assert rows[1].startswith(CONTINUATION), rows
    assert FORGED in rows[1].replace(CONTINUATION, "", 1)


def test_wide_characters_wrap_early_not_late():
    shown = printable_body(("\u4e2d" * 100).encode(), 40, 10)
    rows = shown.split("\n")
    assert cell_width(rows[0]) <= 40 - 1 - 10, rows  # each takes two columns: 14 on the first row
    assert all(row.startswith(CONTINUATION) and cell_width(row) < 40 for row in rows[1:]), rows
    assert "".join(row.removeprefix(CONTINUATION) for row in rows) == "\u4e2d" * 100


def test_without_a_width_a_long_line_is_left_whole():
    body = b"x" * 500
    assert printable_body(body) == "x" * 500


def test_a_newline_flood_is_capped_on_a_terminal():
    shown = printable_body(b"\n".join(b"l%d" % i for i in range(5000)), 80, 20)
    rows = shown.split("\n")
    assert len(rows) == MAX_SHOWN_ROWS + 1, len(rows)
    assert rows[-1] == f"{CONTINUATION}\u2026 {5000 - MAX_SHOWN_ROWS} more lines not shown", rows[-1]


def test_a_capped_message_is_kept_whole_and_the_cut_names_where(tmp_path):
    """The new user's check (stop 26): a 300-line message showed 200 rows and "… 100 more lines (use
    --json)", but it was acknowledged when shown and `inbox --json` then had nothing: the rest was lost.
    Now the whole message is kept in a file of the home, 0600, and the cut names it."""
    from securecomm.client.files import save_long_message
    from securecomm.paths import Paths

    paths = Paths(tmp_path / "home", tmp_path / "home")
    body = b"\n".join(b"line %d" % i for i in range(300))
    shown = printable_body(body, 80, 20, lambda: save_long_message(paths, "bob", b"\x07" * 16, body))
    last = shown.split("\n")[-1]
    assert last.startswith(f"{CONTINUATION}\u2026 100 more lines; the whole message is in "), last
    saved = Path(last.rsplit(" ", 1)[1])
    assert saved.read_bytes() == body and saved.stat().st_mode & 0o777 == 0o600
    assert saved.parent.stat().st_mode & 0o777 == 0o700
    # the same id from another sender, or another text: never written over (the re-check, stop 26)
    other = save_long_message(paths, "dave", b"\x07" * 16, b"dave's")
    again = save_long_message(paths, "bob", b"\x07" * 16, b"not bob's first")
    assert len({str(saved), other, again}) == 3 and saved.read_bytes() == body
    assert save_long_message(paths, "bob", b"\x07" * 16, body) == str(saved)  # shown again: the same file
    called = []
    printable_body(b"short", 80, 20, lambda: called.append(1) or "")
    assert called == []  # nothing is written for a message shown whole


def test_chat_render_wraps_a_room_message_at_the_width(monkeypatch):
    from securecomm.cli.chat import render
    from securecomm.client.events import RoomText

    monkeypatch.setenv("NO_COLOR", "1")
    head = f"{now_text(0)} #lobby mallory {CHECK} "
    line = render(RoomText("lobby", "mallory", forging_body(head), b"i" * 16, 0), "bob", 80)
    rows = line.split("\n")
    assert len(rows) == 2 and rows[1].startswith(CONTINUATION), rows
    assert all(cell_width(row) < 80 for row in rows), rows


def test_inbox_on_an_80_column_terminal_shows_no_forged_row(tmp_path):
    """The attacker's script, end to end: mallory (here bob) pads; alice reads inbox in tmux."""
    srv = ServerProc(tmp_path / "srv").start()
    tmux = Tmux()
    try:
        homes = users_logged_in(srv, tmp_path)
        head = f"{now_text()} bob {CHECK} "
        r = run_entry("--home", str(homes["bob"]), "send", "--to", "alice", forging_body(head).decode())
        assert r.returncode == 0, r.stderr
        tmux.run("new-session", "-d", "-s", "in", "-x", "80", "-y", "20",
                 f"{ENTRY} --home {homes['alice']} inbox; echo INBOX-EXITED-$?; sleep 30")
        screen = tmux.wait_for("in", "INBOX-EXITED-0", timeout=60)
        rows = screen.splitlines()
        forged = [row for row in rows if FORGED in row]
        assert forged and all(row.startswith(CONTINUATION) for row in forged), screen
        # a pipe still gets the body whole, on one line
        r = run_entry("--home", str(homes["bob"]), "send", "--to", "alice", forging_body(head).decode())
        assert r.returncode == 0, r.stderr
        out = sc(homes["alice"], "inbox").stdout.decode()
        assert any(f"bob {CHECK} lunch?" in line and FORGED in line for line in out.splitlines()), out
    finally:
        tmux.kill()
        srv.stop(signal.SIGKILL)


def test_chat_on_an_80_column_terminal_shows_no_forged_row(two_users):  # noqa: F811
    _, homes, tmux = two_users
    tmux.run("new-session", "-d", "-s", "alice", "-x", "80", "-y", "20",
             f"{ENTRY} --home {homes['alice']} chat --room lobby; echo CHAT-EXITED-$?; sleep 30")
    tmux.wait_for("alice", "joined #lobby")
    head = f"{now_text()} [dm] bob \u2192 alice {CHECK} "
    r = run_entry("--home", str(homes["bob"]), "send", "--to", "alice", forging_body(head).decode())
    assert r.returncode == 0, r.stderr
    screen = tmux.wait_for("alice", "VPN password")
    forged = [row for row in screen.splitlines() if FORGED in row]
    assert forged and all(row.startswith(CONTINUATION) for row in forged), screen
    tmux.type("alice", "/quit")
    tmux.wait_for("alice", "CHAT-EXITED-0")
