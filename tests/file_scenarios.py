"""In-process file-transfer scenarios for tests/test_file_transfer.py, each run in its own interpreter.

    python -m tests.file_scenarios NAME ARGS...   prints one JSON object

Each drives securecomm.client.files against the test's real server with a
real connection that is cut at a chosen point (the transport aborted, as a
dropped network would), and reports what happened. They run in a subprocess
because, in-process, two of them in one pytest run left CPython 3.11.7's
AST recursion-depth counter unbalanced and the next module pytest's
assertion rewriter parsed failed with "SystemError: AST constructor
recursion depth mismatch" (a CPython bug in that counter, not reproduced
outside pytest's import hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from securecomm.cli.context import State
from securecomm.client import files as F
from securecomm.client.directory import Contacts
from securecomm.client.login import connect_profile
from securecomm.crypto import identity as ident
from securecomm.errors import SecurecommError
from securecomm.wire.files import FilePut


def _me(home: str) -> tuple[State, Any]:
    state = State(home=home)
    return state, ident.load(state.paths.identity_key("default"))


def _no_bar(size: int, label: str) -> Any:
    return contextlib.nullcontext()


def fetch_cut(home: str, file_id: str, out: str) -> dict[str, Any]:
    """Fetch, the first connection aborted once it has read more than 1 MiB."""
    state, me = _me(home)
    sender_name, notice = F.load_notice(state.paths, file_id)
    # version 2: the device that announced the file signed it (saved with the notice); version 1: the contact
    signer = F.notice_device(state.paths, file_id)
    if signer is None:
        contact = Contacts.load(state.paths.contacts).get(sender_name)
        assert contact is not None
        signer = contact.identity
    offsets: list[int] = []

    async def connect() -> Any:
        client, profile = await connect_profile(state.paths, me)
        request, receive, seen = client.start_request, client.conn.receive_data, [0]

        def recorded(op: str, **args: Any) -> Any:  # file_get goes through start_request (no deadline)
            if op == "file_get":
                offsets.append(args["offset"])
            return request(op, **args)

        def cut_after_a_mebibyte(data: bytes) -> None:
            receive(data)
            seen[0] += len(data)
            if len(offsets) == 1 and seen[0] > 1 << 20:
                client.writer.transport.abort()

        client.start_request, client.conn.receive_data = recorded, cut_after_a_mebibyte
        return client, profile

    warnings: list[str] = []
    asyncio.run(F.fetch_file(connect, me, notice, signer, Path(out), False, 60, warnings.append, _no_bar,
                             F.notice_account(state.paths, me, file_id)))
    return {"offsets": offsets, "warnings": warnings, "stream_size": notice.stream_size}


def upload_cut(home: str, path: str) -> dict[str, Any]:
    """send_file, the first connection aborted after its fourth FILE_PUT."""
    state, me = _me(home)
    offers: list[tuple[dict[str, Any], Any]] = []

    async def connect() -> Any:
        client, profile = await connect_profile(state.paths, me)
        request, send_event, puts = client.request, client.send_event, [0]

        async def recorded(op: str, **args: Any) -> Any:
            answer = await request(op, **args)
            if op == "file_offer":
                offers.append((args, answer))
            return answer

        def cut_after_four_puts(event: Any) -> None:
            if isinstance(event, FilePut) and len(offers) == 1 and puts[0] >= 4:
                return  # the abort is scheduled: a FILE_PUT sent meanwhile would reach the server (flaky bound)
            send_event(event)
            if isinstance(event, FilePut) and len(offers) == 1:
                puts[0] += 1
                if puts[0] == 4:
                    asyncio.get_running_loop().call_soon(client.writer.transport.abort)

        client.request, client.send_event = recorded, cut_after_four_puts
        return client, profile

    warnings: list[str] = []
    with open(path, "rb") as f:
        file_id, sealed = asyncio.run(F.send_file(connect, me, state.paths, "bob", f, Path(path).name,
                                                  os.path.getsize(path), 60, warnings.append, _no_bar))
    return {"offers": offers, "warnings": warnings, "file_id": file_id.hex(), "stream_size": sealed.stream_size}


def upload_grown(home: str, path: str) -> dict[str, Any]:
    """send_file of a descriptor whose size says N bytes while its reads go on past N (a file appended
    to while it is sent)."""
    state, me = _me(home)

    class Grown(io.BytesIO):
        def __init__(self, fd: int) -> None:
            super().__init__(os.urandom(os.fstat(fd).st_size + 500_000))
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    async def connect() -> Any:
        return await connect_profile(state.paths, me)

    warned: list[str] = []
    with open(path, "rb") as f:
        try:
            asyncio.run(F.send_file(connect, me, state.paths, "bob", Grown(f.fileno()), Path(path).name, 0, 30,
                                    warned.append, _no_bar))
        except SecurecommError as e:
            return {"error": type(e).__name__, "message": e.message, "warned": warned}
    return {"error": None, "warned": warned}


def upload_rewritten(home: str, path: str) -> dict[str, Any]:
    """send_file of a file whose last bytes are rewritten in place (the same size) after its first read."""
    state, me = _me(home)

    class Rewritten(io.FileIO):
        touched = False

        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            data = super().read(n)
            if data and not self.touched:
                self.touched = True
                with open(path, "r+b") as w:
                    w.seek(-10, os.SEEK_END)
                    w.write(os.urandom(10))
            return data

    async def connect() -> Any:
        return await connect_profile(state.paths, me)

    warned: list[str] = []
    with Rewritten(path, "rb") as f:
        try:
            asyncio.run(F.send_file(connect, me, state.paths, "bob", f, Path(path).name, 0, 30, warned.append,
                                    _no_bar))
        except SecurecommError as e:
            return {"error": type(e).__name__, "message": e.message, "warned": warned}
    return {"error": None, "warned": warned}


def overlong(home: str, junk_chunks: str) -> dict[str, Any]:
    """A lying sender (attack check): a stream of exactly one FILE_PUT chunk, announced with its true size,
    but offered and uploaded with `junk_chunks` chunks of junk after it. bob's fetch gets the whole stream
    at a chunk boundary and then more FILE_DATA than the notice announced, which it must refuse, not
    keep in memory until the server's RESULT."""
    from securecomm.client.messenger import Messenger
    from securecomm.client.sending import DirectSend
    from securecomm.wire.files import CHUNK, FileAck

    state, me = _me(home)

    async def connect() -> Any:
        return await connect_profile(state.paths, me)

    async def go() -> str:
        client, profile = await connect()
        try:
            messenger = Messenger(client, me, profile.user, state.paths, lambda ev: None, deliveries=False)
            to = await F.recipient_account(messenger, "bob")
            plain = next(n for n in range(CHUNK, 0, -1) if F.stream_size_for(n, to) == CHUNK)
            sealed = F.seal_to_temp(io.BytesIO(os.urandom(plain)), "short.bin", me, to, Path(home) / "outgoing")
            assert sealed.path is not None
            data = sealed.path.read_bytes() + os.urandom(int(junk_chunks) * CHUNK)
            offer = await client.request("file_offer", to="bob", size=len(data))
            file_id = bytes.fromhex(offer["file_id"])
            for at in range(0, len(data), CHUNK):
                client.send_event(FilePut(file_id, at, data[at : at + CHUNK]))
                await F._next_event(client, (FileAck,))
        finally:
            await client.close()
        sender = DirectSend(connect, me, state.paths, "bob", sealed.notice(file_id).encode())
        used, _ = await sender.send(30, lambda text: None)
        await sender.close(used)
        return file_id.hex()

    return {"file_id": asyncio.run(go())}


def notice_to_bob(home: str, body_hex: str) -> dict[str, Any]:
    """Send bob a direct message with exactly this body (a forged or malformed file notice)."""
    from securecomm.client.sending import DirectSend

    state, me = _me(home)

    async def connect() -> Any:
        return await connect_profile(state.paths, me)

    async def go() -> None:
        sender = DirectSend(connect, me, state.paths, "bob", bytes.fromhex(body_hex))
        used, _ = await sender.send(30, lambda text: None)
        await sender.close(used)

    asyncio.run(go())
    return {}


if __name__ == "__main__":
    print(json.dumps({"fetch_cut": fetch_cut, "upload_cut": upload_cut, "upload_grown": upload_grown,
                      "upload_rewritten": upload_rewritten,
                      "overlong": overlong, "notice_to_bob": notice_to_bob}[sys.argv[1]](*sys.argv[2:])))
