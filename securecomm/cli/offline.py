"""`securecomm encrypt` / `securecomm decrypt`: the envelope without a server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from securecomm.cli.context import (
    State,
    info,
    load_identity,
    name_option,
    pass_state,
    passphrase_file_option,
    read_identity_arg,
)
from securecomm.errors import OversizedError, UsageError

ARMOR_BEGIN = b"-----BEGIN SECURECOMM ENVELOPE-----"
ARMOR_END = b"-----END SECURECOMM ENVELOPE-----"


def _read_input(src: str) -> bytes:
    from securecomm.crypto.envelope import MAX_ENVELOPE_SIZE
    from securecomm.files import read_file

    limit = MAX_ENVELOPE_SIZE * 2  # armored input is ~4/3 larger; the parser checks exactly
    data = sys.stdin.buffer.read(limit + 1) if src == "-" else read_file(Path(src))
    if len(data) > limit:
        raise OversizedError("input is larger than the maximum envelope size")
    return data


def _write_output(out: str | None, data: bytes, force: bool) -> None:
    if out is None or out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from securecomm.files import write_private

    write_private(Path(out), data, force=force)  # 0600: plaintext is as private as the key


def armor(raw: bytes) -> bytes:
    import base64

    b64 = base64.b64encode(raw)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return b"\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + b"\n"


def dearmor(data: bytes) -> bytes:
    import base64
    import binascii

    from securecomm.errors import FormatError

    text = data.strip()
    if not text.startswith(ARMOR_BEGIN):
        return data
    if not text.endswith(ARMOR_END):
        raise FormatError("armored envelope is truncated")
    body = b"".join(text[len(ARMOR_BEGIN) : -len(ARMOR_END)].split())
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as e:
        raise FormatError("armored envelope is not valid base64") from e


@click.command(epilog="Example: securecomm encrypt -r bob.pub --armor -o note.sce note.txt")
@click.option("-r", "--recipient", required=True, help="Recipient identity line, or a file holding one.")
@click.option("-o", "--output", help="Write to FILE instead of stdout.")
@click.option("-a", "--armor", "use_armor", is_flag=True, help="Base64 text output that decrypt accepts.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@name_option
@passphrase_file_option
@click.argument("input", default="-")
@pass_state
def encrypt(state: State, recipient: str, output: str | None, use_armor: bool, force: bool, name: str,
            passphrase_file: str | None, input: str) -> None:
    """Seal INPUT (a file, or - for stdin) to RECIPIENT and sign it with your identity.

    The result is the same envelope the server path uses: HPKE to the
    recipient's key, Ed25519 signature by --name, SHA-256 digest inside.
    """
    from securecomm.crypto import envelope

    to = read_identity_arg(recipient)
    if not use_armor and output in (None, "-") and sys.stdout.isatty():
        raise UsageError("refusing to write binary output to a terminal", hint="use --armor or -o FILE")
    me = load_identity(state, name, passphrase_file)
    body = _read_input(input)
    raw = envelope.seal(body, me, to)
    _write_output(output, armor(raw) if use_armor else raw, force)
    info(f"sealed {len(body)} bytes to {to.fingerprint_text} ({to.kem})")


def _known_senders(state: State, sender: str | None) -> dict[bytes, Any]:
    from securecomm.crypto import identity as ident

    if sender:
        who = read_identity_arg(sender)
        return {who.fingerprint: who}
    known: dict[bytes, Any] = {}
    folder = state.paths.identities_dir
    for pub in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
        who = ident.load_public(pub)
        known[who.fingerprint] = who
    from securecomm.client.directory import Contacts

    for contact in Contacts.load(state.paths.contacts).all():
        known[contact.identity.fingerprint] = contact.identity
    return known


@click.command(epilog="Example: securecomm decrypt --from alice.pub -o note.txt note.sce")
@click.option("--from", "sender", help="Sender identity line or file (else: your contacts and identities).")
@click.option("-o", "--output", help="Write the body to FILE (mode 0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@name_option
@passphrase_file_option
@click.argument("input", default="-")
@pass_state
def decrypt(state: State, sender: str | None, output: str | None, force: bool, name: str,
            passphrase_file: str | None, input: str) -> None:
    """Open INPUT (binary or armored), verify signature and digest, write the body.

    Nothing is written unless every check passes. The sender must be known:
    given with --from, or one of your contacts or identities.
    """
    from securecomm.crypto import envelope
    from securecomm.errors import NotAnEnvelopeError, NotFoundError, UnknownSenderError, WrongRecipientError

    raw = dearmor(_read_input(input))
    try:
        me = load_identity(state, name, passphrase_file)
        opened = envelope.open_envelope(raw, me, _known_senders(state, sender))
    except NotAnEnvelopeError as e:
        e.hint = "decrypt reads what `securecomm encrypt` wrote (binary or --armor)"
        raise
    except (NotFoundError, WrongRecipientError) as e:
        e.hint = _which_identity(state, raw) or e.hint
        raise
    except UnknownSenderError as e:
        raise _unknown_sender(sender) from e
    _write_output(output, opened.body, force)
    info(f"from {opened.sender.fingerprint_text}: signature and sha256 digest verified")


def _which_identity(state: State, raw: bytes) -> str | None:
    """The hint for an envelope sealed to another of your identities: which one, by --name."""
    from securecomm.crypto import envelope
    from securecomm.crypto.identity import load_public
    from securecomm.crypto.integrity import same
    from securecomm.errors import SecurecommError

    try:
        recipient = envelope.parse(raw).header.recipient
        for pub in sorted(state.paths.identities_dir.glob("*.pub")):
            if same(load_public(pub).fingerprint, recipient):
                return f"it is sealed to your identity {pub.stem!r}: pass --name {pub.stem}"
    except (SecurecommError, OSError):
        return None
    return "it is sealed to none of your identities (`securecomm paths` shows where they live)"


def _unknown_sender(sender: str | None) -> Exception:
    """Suggest --from only when it was not given; else say the given sender is not the signer."""
    from securecomm.errors import UnknownSenderError

    if sender is None:
        return UnknownSenderError("the sender of this envelope is not a known identity",
                                  hint="pass the sender's identity with --from LINE_OR_FILE")
    return UnknownSenderError("the envelope was not sent by the identity given with --from",
                              hint="check that --from names the sender's public identity, not yours or another's")
