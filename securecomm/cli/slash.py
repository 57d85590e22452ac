"""chat's slash-command grammar: one typed line -> one command for client/chat.py's ChatSession.

Only the words are read here ("/msg USER text", "/trust USER [FINGERPRINT]", ...); what a
command does, and the rules a value must pass that need the store or the server (a room name),
are ChatSession's. Imported by `chat` only, so `--help` stays light.
"""

from __future__ import annotations

import difflib

from securecomm.client.chat import Command, Invalid, Join, Msg, Quit, Say, SendFile, Trust, Who
from securecomm.client.events import printable

#: The commands chat understands, as the help line lists them.
COMMANDS = ("/join ROOM", "/who", "/msg USER text", "/send USER PATH", "/trust USER", "/quit")
MSG_USAGE = "usage: /msg USER text"
SEND_USAGE = "usage: /send USER PATH"
TRUST_USAGE = "usage: /trust USER (shows their new key), then /trust USER FINGERPRINT"


def parse_line(line: str) -> Command:
    """The command a typed line asks for; text that is not a command is a room line, as typed."""
    if line.strip() == "/quit":
        return Quit()
    if line.strip() in ("/help", "/?"):  # the new-user check: "/help" was an unknown command
        return Invalid(f"commands: {', '.join(COMMANDS)} (and /help)", offline_too=True)
    if line.startswith("/join "):
        return Join(line[len("/join "):].strip())
    if line.strip() == "/who":
        return Who()
    if line.startswith("/msg "):
        msg = parse_msg(line)
        return Invalid(MSG_USAGE, offline_too=True) if msg is None else Msg(*msg)
    if line.startswith("/send "):
        parts = line.split(maxsplit=2)
        if len(parts) != 3:
            return Invalid(SEND_USAGE)
        user = parts[1]
        return SendFile(user.lower() if user.isascii() else user, parts[2].strip())
    if line.startswith("/trust "):
        return _trust(line)
    if line.startswith("/"):
        return Invalid(unknown_command(line))
    return Say(line)


def parse_msg(line: str) -> tuple[str, str] | None:
    """`/msg USER text` -> (user, text); None when USER or the text is missing.

    USER is folded as the server folds names (store.db.normalise_name): ASCII lower-cased, so
    `/msg Bob` reaches bob whether typed online or queued offline; anything else is kept as typed
    for the server to refuse, never folded (str.lower() would turn a KELVIN SIGN into "k")."""
    parts = line.split(" ", 2)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        return None
    user = parts[1]
    return (user.lower() if user.isascii() else user), parts[2]


def _trust(line: str) -> Command:
    """/trust USER shows USER's changed key; /trust USER FINGERPRINT accepts it."""
    from securecomm.store.db import NAME_RE

    parts = line.split()
    user = parts[1].lower() if len(parts) in (2, 3) else ""
    if not NAME_RE.fullmatch(user):
        return Invalid(TRUST_USAGE)
    return Trust(user, parts[2] if len(parts) == 3 else None)


def unknown_command(line: str) -> str:
    """Name the command that was not understood, suggest the closest one, list them all."""
    word = line.split(" ", 1)[0]
    names = [c.split(" ", 1)[0] for c in COMMANDS]
    if word in names:  # known, but used wrongly (say, /join without a room)
        return f"usage: {COMMANDS[names.index(word)]} (commands: {', '.join(COMMANDS)})"
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.5)
    guess = f"; did you mean {close[0]}?" if close else ""
    return f"unknown command {printable(word.encode())}{guess} (commands: {', '.join(COMMANDS)})"
