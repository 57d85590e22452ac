"""What the client tells its user interface, and how server and peer text is made safe to show.

The event types are plain frozen dataclasses (DirectMessage, RoomText, DeliveryReceipt,
Membership, Alert, Notice): the only contract between client/ and a front end (cli/, a test).
`Alert` was `Warning` (it shadowed the builtin). The escaping helpers live here too, because
every string from a server or peer passes through them before it reaches a terminal.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from securecomm.timeutil import now_ms


# -- what the UI is told ------------------------------------------------------------------
@dataclass(frozen=True)
class DirectMessage:
    sender: str
    body: bytes
    msg_id: bytes
    sent_at_ms: int
    fingerprint: str
    #: Our own message, copied from another of our devices: whom it was sent to (protocol version 2).
    to: str | None = None
    #: Sealed to the device's last-resort prekey, not a one-time one (docs/PROTOCOL.md 6.6).
    without_one_time_key: bool = False
    #: The sending device's identity line (version 2: verified on its user's list); a file it announces
    #: is checked against this key when fetched.
    device: str | None = None


@dataclass(frozen=True)
class RoomText:
    room: str
    sender: str
    body: bytes
    msg_id: bytes
    sent_at_ms: int


@dataclass(frozen=True)
class DeliveryReceipt:
    to: str
    msg_id: bytes
    verified: bool


@dataclass(frozen=True)
class Membership:
    room: str
    user: str
    event: str
    #: Further joins and leaves of this user collapsed into this line (`event` is the latest).
    more: int = 0


@dataclass(frozen=True)
class Alert:
    text: str
    #: False when no message was lost or refused (the server's noise, an unknown room event):
    #: `inbox` counts only the others as messages that failed verification.
    failed: bool = True
    #: A message kept on the server until its sender's changed key is trusted: no failure either, but
    #: `inbox` says how many wait so (the new-user check: they were "failed verification").
    held: bool = False
    #: Counted, not printed: one of a flood past the first few (a hostile server or peer can send any
    #: number of bad messages; `inbox` still counts each in its summary).
    quiet: bool = False


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not a failure (say, a changed key now trusted)."""

    text: str

    def __str__(self) -> str:
        return self.text



def now_text(ms: int | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime((ms or now_ms()) / 1000))


def printable(body: bytes) -> str:
    """Message text safe for a terminal: control characters (escape sequences!) are shown, not obeyed."""
    text = body.decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)


#: Starts every continuation line of a multi-line message: a body cannot make a line of its own
#: that looks like the start of another message (no time stamp, no sender in the first column).
CONTINUATION = "    \u2502 "


#: At most this many rows of one message on a terminal (a 400,000-newline message would scroll
#: everything else away); the rest is counted in one line naming the file that holds it all.
MAX_SHOWN_ROWS = 200


def printable_body(body: bytes, width: int | None = None, first: int = 0,
                   save_whole: Callable[[], str] | None = None) -> str:
    """A message body for a terminal: one shown line per line of text, each escaped as in
    `printable`, continuation lines indented behind CONTINUATION. One trailing newline (as
    `printf ...\\n | send -` leaves) is dropped; any other control character stays escaped.

    With `width` (a terminal's columns; `first` = columns already used on the first row by the
    time stamp and sender), long lines are wrapped here, each further row behind CONTINUATION too:
    left to the terminal, padding could push forged text to column 0 of a row of its own. At
    most MAX_SHOWN_ROWS rows are shown; then `save_whole()` keeps the whole body and names where
    (the message is acknowledged once shown: the rest must not be lost, the new-user check)."""
    text = body.decode("utf-8", "replace")
    text = text[:-1] if text.endswith("\n") else text
    lines = (printable(line.encode()) for line in text.split("\n"))
    if width is None:
        return ("\n" + CONTINUATION).join(lines)
    rows = _wrapped(lines, width, first)
    shown = list(itertools.islice(rows, MAX_SHOWN_ROWS))
    rest = sum(1 for _ in rows)
    if rest:
        where = save_whole() if save_whole is not None else None
        shown.append(f"\u2026 {rest} more lines; the whole message is in {printable(where.encode())}" if where
                     else f"\u2026 {rest} more lines not shown")
    return ("\n" + CONTINUATION).join(shown)


def cell_width(text: str) -> int:
    """Columns `text` may take on a terminal: ASCII 1, anything else 2. Overcounting only wraps
    a row early; undercounting would let the terminal wrap it, which is what we must prevent."""
    return sum(1 if ord(c) < 128 else 2 for c in text)


def _wrapped(lines: Iterator[str], width: int, first: int) -> Iterator[str]:
    """Rows of at most the columns left: the first after `first`, the others after CONTINUATION.
    One column is kept free (some terminals wrap on the last column itself)."""
    room = max(1, width - 1 - first)
    for line in lines:
        row: list[str] = []
        used = 0
        for c in line:
            w = cell_width(c)
            if used + w > room and row:
                yield "".join(row)
                row, used, room = [], 0, max(1, width - 1 - cell_width(CONTINUATION))
            row.append(c)
            used += w
        yield "".join(row)
        room = max(1, width - 1 - cell_width(CONTINUATION))


def direct_head(ev: DirectMessage) -> str:
    """Who a direct message is from, escaped: `bob`, `alice -> bob (sent)` for our own message
    copied from another of our devices, with "(sealed without a one-time key)" when it says so."""
    who = printable(ev.sender.encode())
    if ev.to:
        who += f" \u2192 {printable(ev.to.encode())} (sent)"
    if ev.without_one_time_key:
        who += " (sealed without a one-time key)"
    return who
