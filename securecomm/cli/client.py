"""`securecomm send`, `securecomm status` and `securecomm chat`."""

from __future__ import annotations

import sys
from typing import Any

import click

from securecomm.cli.context import State, emit_json, json_option, pass_state, passphrase_file_option
from securecomm.errors import NotImplementedYet, OversizedError

server_option = click.option("--server", help="HOST:PORT (default: the saved profile's server).")
ca_option = click.option("--ca", type=click.Path(dir_okay=False), help="Trust this CA certificate (PEM).")
pin_option = click.option("--pin", help="Trust the CA or server certificate with this SHA256:... fingerprint.")


def _identity(state: State, passphrase_file: str | None) -> Any:
    from securecomm.cli.context import load_identity
    from securecomm.config import Profile

    return load_identity(state, Profile.load(state.paths.profile).identity, passphrase_file)


def _read_body(message: str) -> bytes:
    from securecomm.crypto.envelope import MAX_BODY_SIZE

    body = message.encode() if message != "-" else sys.stdin.buffer.read(MAX_BODY_SIZE + 1)
    if len(body) > MAX_BODY_SIZE:
        raise OversizedError(f"message is larger than the maximum of {MAX_BODY_SIZE} bytes")
    return body


@click.command(epilog="Examples:\n\n  securecomm send 'hello'\n\n  date | securecomm send - --json")
@click.argument("message")
@server_option
@ca_option
@pin_option
@passphrase_file_option
@json_option
@pass_state
def send(state: State, message: str, server: str | None, ca: str | None, pin: str | None,
         passphrase_file: str | None, as_json: bool) -> None:
    """Send MESSAGE (or - for stdin) to the server and print its receipt.

    The message is sealed to the server's identity with HPKE, signed with
    your identity key, and sent over TLS 1.3. Exit 0 only when the server's
    receipt came back and its SHA-256 equals that of the message.
    """
    import asyncio

    from securecomm.cli.users import ask_trust
    from securecomm.net.connect import connect_profile

    body = _read_body(message)
    identity = _identity(state, passphrase_file)

    async def go() -> Any:
        client, _ = await connect_profile(state.paths, identity, server=server, ca=ca, pin=pin, ask=ask_trust)
        async with client:
            return await client.send_message(body, identity)

    receipt = asyncio.run(go())
    if as_json:
        emit_json({"status": "delivered", "id": receipt.msg_id.hex(), "sha256": receipt.sha256.hex(),
                   "stored_at_ms": receipt.stored_at_ms, "duplicate": receipt.duplicate})
        return
    click.echo(f"delivered {receipt.msg_id.hex()} sha256:{receipt.sha256.hex()}")


@click.command(epilog="Example: securecomm status --json")
@server_option
@ca_option
@pin_option
@passphrase_file_option
@json_option
@pass_state
def status(state: State, server: str | None, ca: str | None, pin: str | None, passphrase_file: str | None,
           as_json: bool) -> None:
    """Connect with the saved profile and print a security report of the session.

    Like `openssl s_client -brief`, but for the whole stack: TLS version,
    cipher and key exchange, how the server was trusted, the HPKE suite
    messages use, whether each layer is post-quantum, and who you are.
    """
    import asyncio

    from securecomm.cli.users import ask_trust
    from securecomm.net.connect import connect_profile
    from securecomm.net.report import security_report

    identity = _identity(state, passphrase_file)

    async def go() -> dict[str, Any]:
        client, profile = await connect_profile(state.paths, identity, server=server, ca=ca, pin=pin, ask=ask_trust)
        async with client:
            return security_report(client, profile, identity)

    report = asyncio.run(go())
    if as_json:
        emit_json(report)
        return
    for key, value in report.items():
        if isinstance(value, dict):
            for k, v in value.items():
                click.echo(f"{key + '.' + k:28} {v}")
        else:
            click.echo(f"{key:28} {value}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def chat(args: tuple[str, ...]) -> None:
    """Interactive chat session. Not implemented yet (exit code 2): see issue 5."""
    raise NotImplementedYet("chat is not implemented yet")
