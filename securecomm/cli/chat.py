"""`securecomm chat`: the interactive terminal client.

On a terminal, prompt_toolkit reads the line being typed (with line editing)
and its patch_stdout prints incoming lines above it. prompt_toolkit switches
the terminal to raw mode only while it reads and restores it on every way out
(/quit, Ctrl-D, Ctrl-C, an error, cancellation), which a readline thread
blocked in input() cannot do. Without a terminal, lines are read from stdin
and printed plainly. The network runs on the same asyncio loop.

prompt_toolkit is imported only here, inside the command: `--help` stays light.
"""

from __future__ import annotations

import shutil
import sys
import threading
from typing import Any

import click

from securecomm.cli.context import State, connection_options, pass_state, profile_identity, run_client, style

PROMPT = "> "


def _saver(save_whole: Any, ev: Any) -> Any:
    return None if save_whole is None else (lambda: save_whole(ev))


def render(ev: Any, me: str, width: int | None = None, save_whole: Any = None) -> str:
    """One event as shown; with `width` (a terminal's columns) message bodies are wrapped here.
    `save_whole(ev)`: keeps a message too long to show and returns where (events.printable_body)."""
    from securecomm.client.events import (
        Alert,
        DeliveryReceipt,
        DirectMessage,
        Membership,
        RoomText,
        cell_width,
        now_text,
        printable,
        printable_body,
    )

    def clean(text: str) -> str:  # names come from the server: shown, never obeyed
        return printable(text.encode())

    ok = style("\u2713", fg="green")
    if isinstance(ev, RoomText):
        stamp, who = f"{now_text(ev.sent_at_ms)} #{clean(ev.room)} ", clean(ev.sender)
        first = cell_width(f"{stamp}{who} \u2713 ")  # the columns before the body, colours aside
        return f"{stamp}{style(who, bold=True)} {ok} {printable_body(ev.body, width, first, _saver(save_whole, ev))}"
    if isinstance(ev, DirectMessage):
        stamp, who = f"{now_text(ev.sent_at_ms)} [dm] ", clean(ev.sender)
        to = f"{clean(ev.to)} (sent)" if ev.to else me  # our own, copied from another of our devices
        mark = " (sealed without a one-time key)" if ev.without_one_time_key else ""
        first = cell_width(f"{stamp}{who} \u2192 {to}{mark} \u2713 ")
        body = printable_body(ev.body, width, first, _saver(save_whole, ev))
        return f"{stamp}{style(who, bold=True)} \u2192 {to}{mark} {ok} {body}"
    if isinstance(ev, DeliveryReceipt):
        return f"{now_text()} {ok}{ok} {clean(ev.to)} received {ev.msg_id.hex()[:8]} (signed receipt)"
    if isinstance(ev, Membership):
        if ev.more:  # a burst of joins and leaves, collapsed into one line
            return (f"{now_text()} * {clean(ev.user)} joined and left #{clean(ev.room)} repeatedly: {ev.more} "
                    f"more joins/leaves (now {'in the room' if ev.event == 'joined' else 'gone'})")
        return f"{now_text()} * {clean(ev.user)} {ev.event} #{clean(ev.room)}"
    if isinstance(ev, Alert):
        return style(f"{now_text()} \u26a0 {clean(ev.text)}", fg="red", bold=True)
    return f"{now_text()} {clean(str(ev))}"


@click.command(epilog="Example: securecomm chat --room ops\n\n"
               "Inside: /join ROOM, /who, /msg USER text, /send USER PATH, /trust USER, /quit (or Ctrl-D, Ctrl-C)")
@click.option("--room", default="lobby", show_default=True, help="Room to join.")
@connection_options
@pass_state
def chat(state: State, room: str, server: str | None, ca: str | None, pin: str | None,
         passphrase_file: str | None) -> None:
    """Interactive chat: a room (end to end with sender keys) and direct messages.

    Lines you type go to the room; /msg USER text sends end to end to one
    user (stored for them if offline); /send USER PATH sends a file of any
    size in the background (they fetch it with `securecomm fetch ID`). Every incoming message shows a
    check mark once its signature and digest verified; anything that fails is
    shown as a warning instead. If the connection drops or the server
    restarts, chat reconnects with backoff (at most a few seconds apart) and
    resends what the server had not yet receipted; room lines typed meanwhile
    wait until the room's members are back, and any line someone did not get
    is named in a warning.
    """
    import asyncio
    import signal

    from securecomm.client.chat import ChatSession, Command, room_name
    from securecomm.config import Profile

    room = room_name(room)
    identity = profile_identity(state, passphrase_file)
    profile = Profile.load(state.paths.profile)
    tty = sys.stdin.isatty() and sys.stdout.isatty()

    def save_whole(ev: Any) -> str:
        from securecomm.client.files import save_long_message

        return save_long_message(state.paths, ev.sender, ev.msg_id, ev.body)

    def show(ev: Any) -> None:
        if getattr(ev, "quiet", False):  # an Alert counted, not printed (a flood)
            return
        # wrapped at the width of now (the window may have been resized); under patch_stdout: above
        # the line being typed
        line = render(ev, profile.user, shutil.get_terminal_size().columns if tty else None, save_whole)
        print(line if sys.stdout.isatty() else click.unstyle(line), flush=True)  # no colour codes in a pipe

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[Command | None] = asyncio.Queue()  # parsed by cli/slash.py as typed
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # leave the way /quit does
            loop.add_signal_handler(sig, leave, sig == signal.SIGINT, lines)
        session = ChatSession(state.paths, identity, profile.user, room, show, server=server, ca=ca, pin=pin,
                              command=state.command)
        if tty:
            await _on_terminal(session.run(lines), lines, leave)
        else:
            threading.Thread(target=_read_pipe, args=(loop, lines), daemon=True, name="securecomm-input").start()
            await session.run(lines)

    #: Ctrl-C (at the prompt, or SIGINT without a terminal) leaves the way /quit does, then exits
    #: 130 as README's exit-code table says; /quit, Ctrl-D and end of input exit 0
    interrupted = False

    def leave(by_ctrl_c: bool, lines: Any) -> None:
        nonlocal interrupted
        interrupted = interrupted or by_ctrl_c
        lines.put_nowait(None)

    run_client(main())
    click.echo("bye")
    if interrupted:
        from securecomm.errors import InterruptedByUser

        raise InterruptedByUser()


async def _on_terminal(run: Any, lines: Any, leave: Any) -> None:
    """Run the chat coroutine `run` while prompt_toolkit reads lines into `lines`."""
    import asyncio
    import contextlib

    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    from securecomm.cli.slash import parse_line

    prompt: PromptSession[str] = PromptSession(PROMPT)  # history in memory only: nothing typed touches disk

    async def read() -> None:
        while True:
            try:
                line = await prompt.prompt_async()
            except EOFError:  # Ctrl-D
                leave(False, lines)
                return
            except KeyboardInterrupt:  # Ctrl-C
                leave(True, lines)
                return
            lines.put_nowait(parse_line(line))

    with patch_stdout(raw=True):  # raw: our colours pass; peer text is escaped before it gets here
        reader = asyncio.create_task(read())
        try:
            await run
        finally:
            reader.cancel()  # prompt_toolkit restores the terminal as it unwinds
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _read_pipe(loop: Any, lines: Any) -> None:
    """Without a terminal: one line per line of stdin; end of input quits."""
    import contextlib

    from securecomm.cli.slash import parse_line

    with contextlib.suppress(RuntimeError):  # the loop may be gone once chat has ended
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, parse_line(line.rstrip("\n")))
        loop.call_soon_threadsafe(lines.put_nowait, None)
