"""`securecomm fetch ID` and `send --to USER --file PATH` (docs/PROTOCOL.md 4.4): options, bars, output."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from securecomm.cli.context import (
    State,
    connection_options,
    emit_json,
    info,
    json_option,
    pass_state,
    profile_identity,
    run_client,
    warn,
)


@contextlib.contextmanager
def _bar(size: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A Click progress bar on stderr when that is a terminal and the file is large; else nothing."""
    from securecomm.cli.bigfiles import PROGRESS_MIN

    if size < PROGRESS_MIN or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


def _connector(state: State, identity: Any, **conn: Any) -> Any:
    from securecomm.cli.context import ask_trust
    from securecomm.client.login import connect_profile

    async def connect() -> Any:
        return await connect_profile(state.paths, identity, ask=ask_trust, **conn)

    return connect


def send_file(state: State, identity: Any, to: str, path: str, timeout: float, as_json: bool, **conn: Any) -> None:
    """The body of `send --to USER --file PATH`."""
    from securecomm.client import files as F
    from securecomm.errors import UsageError
    from securecomm.files import open_input
    from securecomm.wire.files import valid_name

    # `-`: standard input, as `send -` and `encrypt` read it (new-user check: "- does not exist"); a pipe
    # has no size, so it is sealed first (outgoing/), and it arrives named "stdin"
    src_path = Path("/dev/stdin") if path == "-" and Path("/dev/stdin").exists() else Path(path)
    if not valid_name(src_path.name):
        raise UsageError(f"cannot send {path!r}: its name is not a plain file name")
    with open_input(src_path) as src:
        file_id, sealed = run_client(_terminable(F.send_file(_connector(state, identity, **conn), identity,
                                                             state.paths, to, src, src_path.name,
                                                             src_path.stat().st_size, timeout, warn, _bar)))
    if as_json:
        emit_json({"status": "stored", "file_id": file_id.hex(), "to": to.lower(), "name": sealed.name,
                   "size": sealed.size, "sha256": sealed.sha256.hex()})
        return
    click.echo(f"stored file {file_id.hex()} ({sealed.name}, {sealed.size} bytes) for {to.lower()}")


T = TypeVar("T")


async def _terminable(work: Coroutine[Any, Any, T]) -> T:
    """`work`, which SIGTERM cancels as Ctrl-C does, so that its cleanup runs (send --file cancels an
    upload it has announced: the recipient may be fetching it; fetch deletes its temp file, which holds
    verified plaintext); then exit 130, "interrupted"."""
    import asyncio
    import signal

    from securecomm.errors import InterruptedByUser

    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    terminated = False

    def on_term() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise InterruptedByUser("terminated (SIGTERM)") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


@click.command(epilog="Examples:\n\n  securecomm fetch 3f2a...c9\n\n  securecomm fetch 3f2a...c9 -o ~/report.pdf")
@click.argument("file_id", metavar="ID")
@click.option("-o", "--output", help="Write the file here (default: its announced name, in this folder).")
@click.option("--force", is_flag=True,
              help="Replace an existing file (the old one is kept as NAME.bak, or NAME.bak.N if that exists).")
@click.option("--timeout", type=float, default=120, show_default=True,
              help="Seconds to keep resuming after dropped connections.")
@connection_options
@json_option
@pass_state
def fetch(state: State, file_id: str, output: str | None, force: bool, timeout: float, server: str | None,
          ca: str | None, pin: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Download the received file ID (as `inbox` lists it), verify and decrypt it.

    The file is decrypted as it downloads, into a hidden temp file beside
    the output; a file still being uploaded is downloaded as it arrives. A
    dropped connection or a stalled upload is resumed where it stopped (for
    up to --timeout seconds); an interrupted fetch starts over when run
    again. The file appears at its name only after its size, the sender's
    signatures (the last covers the plaintext's SHA-256) and any digest the
    notice names verified; then the server deletes its copy.
    """
    from securecomm.client import files as F
    from securecomm.client.directory import Contacts
    from securecomm.errors import ChangedKeyError, ExistsError, FileGoneError
    from securecomm.files import check_output

    sender_name, notice = F.load_notice(state.paths, file_id)
    out = Path(output) if output else Path(F.local_name(notice.name))
    if not output and out.name != notice.name:
        warn(f"the sender named this file {notice.name!r}; saving it as {out.name!r} (no leading dot from a peer)")
    if out.exists() and not out.is_dir() and not force:
        raise ExistsError(f"{out} already exists", hint="use -o PATH, or --force to replace it")
    check_output(out, force=force)  # a mistyped -o fails here, before anything is asked of the server
    signer = F.notice_device(state.paths, file_id)  # version 2: the device that announced it, checked then
    if signer is None:
        contact = Contacts.load(state.paths.contacts).get(sender_name)
        if contact is None:
            raise ChangedKeyError(f"{sender_name}'s key is not pinned", hint="run securecomm inbox first")
        signer = contact.identity
    identity = profile_identity(state, passphrase_file)
    # version 2: the stream names this account and opens with the notice's key, on every device (2.6.1)
    account = F.notice_account(state.paths, identity, file_id)
    connect = _connector(state, identity, server=server, ca=ca, pin=pin)
    try:
        digest = run_client(_terminable(F.fetch_file(connect, identity, notice, signer, out, force, timeout, warn,
                                                     _bar, account)))
    except FileGoneError:  # not on the server, for good: its key goes (a hostile server only denies the file);
        # only the server's refusal: a local NotFoundError (a mistyped -o folder) threw the only key away
        # (the attacker's and the new user's checks)
        F.forget_gone(state.paths, notice.file_id)
        raise
    F.forget_notice(state.paths, notice.file_id, out)
    if as_json:
        emit_json({"status": "fetched", "file_id": notice.file_id.hex(), "from": sender_name, "path": str(out),
                   "size": notice.size, "sha256": digest.hex()})
        return
    info(f"from {sender_name}: {notice.size} bytes, signature and sha256 verified")
    click.echo(str(out))
