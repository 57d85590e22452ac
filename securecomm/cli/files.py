"""`securecomm fetch ID` and the body of `send --to USER --file PATH` (docs/PROTOCOL.md 4.4)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from securecomm.cli.client import connection_options
from securecomm.cli.context import State, emit_json, info, json_option, pass_state
from securecomm.errors import SecurecommError


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
    from securecomm.cli.users import ask_trust
    from securecomm.net.connect import connect_profile

    async def connect() -> Any:
        return await connect_profile(state.paths, identity, ask=ask_trust, **conn)

    return connect


def send_file(state: State, identity: Any, to: str, path: str, timeout: float, as_json: bool, **conn: Any) -> None:
    """Seal PATH to TO, upload it (resuming after a drop), then send TO the notice as a direct message."""
    import asyncio

    from securecomm.cli.context import warn
    from securecomm.files import open_input
    from securecomm.net import filetransfer as FT
    from securecomm.net.messenger import Messenger
    from securecomm.net.sending import DirectSend
    from securecomm.wire.files import valid_name

    src_path = Path(path)
    if not valid_name(src_path.name):
        raise SecurecommError(f"cannot send {path!r}: its name is not a plain file name")
    connect = _connector(state, identity, **conn)

    async def recipient_key() -> Any:
        client, profile = await connect()
        try:
            return await Messenger(client, identity, profile.user, state.paths, lambda ev: None,
                                   deliveries=False).identity_of(to)
        finally:
            await client.close()

    async def go() -> tuple[bytes, Any]:
        to_key = await recipient_key()
        with open_input(src_path) as src, _bar(src_path.stat().st_size, "sealing") as bar:
            sealed = FT.seal_to_temp(src, src_path.name, identity, to_key, state.paths.data_dir / "outgoing", bar)
        try:
            file_id: bytes | None = None

            async def upload(client: Any) -> None:
                nonlocal file_id
                file_id, received = await FT.offer(client, to.lower(), sealed, file_id)
                with _bar(sealed.stream_size - received, "uploading") as up:
                    await FT.put_all(client, file_id, sealed, received, up)

            await FT.with_retry(connect, upload, timeout, warn)
            assert file_id is not None
            sender = DirectSend(connect, identity, state.paths, to, sealed.notice(file_id).encode())
            client, _ = await sender.send(timeout, warn)
            await sender.close(client)
            return file_id, sealed
        finally:
            sealed.path.unlink(missing_ok=True)

    file_id, sealed = asyncio.run(go())
    if as_json:
        emit_json({"status": "stored", "file_id": file_id.hex(), "to": to.lower(), "name": sealed.name,
                   "size": sealed.size, "sha256": sealed.sha256.hex()})
        return
    click.echo(f"stored file {file_id.hex()} ({sealed.name}, {sealed.size} bytes) for {to.lower()}")


@click.command(epilog="Examples:\n\n  securecomm fetch 3f2a...c9\n\n  securecomm fetch 3f2a...c9 -o ~/report.pdf")
@click.argument("file_id", metavar="ID")
@click.option("-o", "--output", help="Write the file here (default: its announced name, in this folder).")
@click.option("--force", is_flag=True, help="Replace an existing file (the old one is kept as .bak).")
@click.option("--timeout", type=float, default=120, show_default=True,
              help="Seconds to keep resuming after dropped connections.")
@connection_options
@json_option
@pass_state
def fetch(state: State, file_id: str, output: str | None, force: bool, timeout: float, server: str | None,
          ca: str | None, pin: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Download the received file ID (as `inbox` lists it), verify and decrypt it.

    The ciphertext goes to a hidden .part file beside the output, so a
    dropped connection (or running fetch again) resumes where it stopped.
    The file appears at its name only after its size, both SHA-256 digests
    and the sender's signatures verified; then the server deletes its copy.
    """
    import asyncio

    from securecomm.cli.client import _identity
    from securecomm.cli.context import warn
    from securecomm.contacts import ChangedKeyError, Contacts
    from securecomm.files import AtomicOutput
    from securecomm.net import filetransfer as FT

    sender_name, notice = FT.load_notice(state.paths, file_id)
    out = Path(output) if output else Path(notice.name)
    if out.exists() and not force:
        from securecomm.errors import ExistsError

        raise ExistsError(f"{out} already exists", hint="use -o PATH, or --force to replace it")
    contact = Contacts.load(state.paths.contacts).get(sender_name)
    if contact is None:
        raise ChangedKeyError(f"{sender_name}'s key is not pinned", hint="run securecomm inbox first")
    identity = _identity(state, passphrase_file)
    connect = _connector(state, identity, server=server, ca=ca, pin=pin)
    part = out.with_name(f".{out.name}.{notice.file_id.hex()}.part")

    async def download(client: Any) -> Any:
        with _bar(notice.stream_size, "downloading") as bar:
            await FT.get_all(client, notice, part, bar)
        with AtomicOutput(out, force=force) as target:
            opening = FT.check_and_open(part, notice, identity, contact.identity, target)
            target.commit()
        part.unlink(missing_ok=True)
        try:
            await client.request("file_done", file_id=notice.file_id.hex())
        except SecurecommError as e:
            warn(f"the server keeps its copy until it expires: {e.message}")
        return opening

    asyncio.run(FT.with_retry(connect, download, timeout, warn))
    (FT.notices_dir(state.paths) / f"{notice.file_id.hex()}.json").unlink(missing_ok=True)
    if as_json:
        emit_json({"status": "fetched", "file_id": notice.file_id.hex(), "from": sender_name, "path": str(out),
                   "size": notice.size, "sha256": notice.sha256.hex()})
        return
    info(f"from {sender_name}: {notice.size} bytes, signature and sha256 verified")
    click.echo(str(out))
