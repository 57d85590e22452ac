"""`securecomm chat`: the interactive terminal client.

Input is read on a thread (with readline line editing); the network runs on
the asyncio loop. Incoming lines are printed above the line being typed:
clear the line, print, then redraw the prompt and what was typed so far.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from securecomm.cli.context import State, pass_state, passphrase_file_option, style

PROMPT = "> "


class Screen:
    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.lock = threading.Lock()
        try:
            import readline

            self.readline: Any = readline
        except ImportError:  # pragma: no cover - not on every platform
            self.readline = None

    def show(self, text: str) -> None:
        with self.lock:
            if self.tty:
                typed = self.readline.get_line_buffer() if self.readline else ""
                sys.stdout.write("\r\x1b[2K" + text + "\n" + PROMPT + typed)
            else:
                sys.stdout.write(text + "\n")
            sys.stdout.flush()


def render(ev: Any, me: str) -> str:
    from securecomm.net.messenger import (
        DeliveryReceipt,
        DirectMessage,
        Membership,
        RoomText,
        Warning,
        now_text,
        printable,
    )

    def clean(text: str) -> str:  # names come from the server: shown, never obeyed
        return printable(text.encode())

    ok = style("\u2713", fg="green")
    if isinstance(ev, RoomText):
        return (f"{now_text(ev.sent_at_ms)} #{clean(ev.room)} {style(clean(ev.sender), bold=True)} {ok} "
                f"{printable(ev.body)}")
    if isinstance(ev, DirectMessage):
        return (f"{now_text(ev.sent_at_ms)} [dm] {style(clean(ev.sender), bold=True)} \u2192 {me} {ok} "
                f"{printable(ev.body)}")
    if isinstance(ev, DeliveryReceipt):
        return f"{now_text()} {ok}{ok} {clean(ev.to)} received {ev.msg_id.hex()[:8]} (signed receipt)"
    if isinstance(ev, Membership):
        return f"{now_text()} * {clean(ev.user)} {ev.event} #{clean(ev.room)}"
    if isinstance(ev, Warning):
        return style(f"{now_text()} \u26a0 {clean(ev.text)}", fg="red", bold=True)
    return f"{now_text()} {clean(str(ev))}"


@click.command(epilog="Example: securecomm chat --room ops\n\n"
               "Inside: /join ROOM, /who, /msg USER text, /quit (or Ctrl-D, Ctrl-C)")
@click.option("--room", default="lobby", show_default=True, help="Room to join.")
@passphrase_file_option
@pass_state
def chat(state: State, room: str, passphrase_file: str | None) -> None:
    """Interactive chat: a room (end to end with sender keys) and direct messages.

    Lines you type go to the room; /msg USER text sends end to end to one
    user (stored for them if offline). Every incoming message shows a
    check mark once its signature and digest verified; anything that fails is
    shown as a warning instead. If the connection drops, chat reconnects with
    backoff and resends what the server had not yet receipted.
    """
    import asyncio

    from securecomm.cli.client import _identity
    from securecomm.config import Profile
    from securecomm.net.chatsession import ChatSession
    from securecomm.store.db import normalise_name

    room = normalise_name(room)
    identity = _identity(state, passphrase_file)
    profile = Profile.load(state.paths.profile)
    screen = Screen()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def read_input() -> None:
            while True:
                try:
                    line = input(PROMPT if screen.tty else "")
                except (EOFError, KeyboardInterrupt):
                    loop.call_soon_threadsafe(lines.put_nowait, None)
                    return
                loop.call_soon_threadsafe(lines.put_nowait, line)

        import signal

        loop.add_signal_handler(signal.SIGINT, lambda: lines.put_nowait(None))
        threading.Thread(target=read_input, daemon=True, name="securecomm-input").start()
        session = ChatSession(state.paths, identity, profile.user, room,
                              lambda ev: screen.show(render(ev, profile.user)))
        await session.run(lines)

    asyncio.run(main())
    if screen.tty:
        sys.stdout.write("\r\x1b[2K")
    click.echo("bye")
