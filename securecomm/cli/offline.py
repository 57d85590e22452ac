"""`securecomm encrypt` / `securecomm decrypt`: the envelope without a server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from securecomm.cli.bigfiles import (
    armor_blocks,
    blocks_from,
    dearmor_blocks,
    input_size,
    progress,
    read_up_to,
    write_all,
)
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


def _write_output(out: str | None, data: bytes, force: bool) -> None:
    if out is None or out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from securecomm.files import AtomicOutput

    # 0600 (plaintext is as private as the key), and the same checks as any -o (the re-check: a small
    # output went through write_private, which moved a folder aside and made missing folders)
    with AtomicOutput(Path(out), force=force) as target:
        target.write(data)
        target.commit()


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
    Inputs larger than one message (about 1 MiB) use the streaming form:
    64 KiB chunks, constant memory whatever the size, from a file or a pipe,
    and a progress bar on a terminal. -o FILE appears only once complete.
    """
    from securecomm.crypto import envelope

    to = read_identity_arg(recipient)
    if not use_armor and output in (None, "-") and sys.stdout.isatty():
        raise UsageError("refusing to write binary output to a terminal", hint="use --armor or -o FILE")
    me = load_identity(state, name, passphrase_file)
    source = _open_source(input)
    body = read_up_to(source, envelope.MAX_BODY_SIZE + 1)
    if len(body) > envelope.MAX_BODY_SIZE:  # too large for one envelope: the streaming form
        total = _encrypt_stream(source, body, me, to, output, use_armor, force)
        info(f"sealed {total} bytes to {to.fingerprint_text} ({to.kem}) in the streaming form")
        return
    raw = envelope.seal(body, me, to)
    _write_output(output, armor(raw) if use_armor else raw, force)
    info(f"sealed {len(body)} bytes to {to.fingerprint_text} ({to.kem})")


def _open_source(src: str) -> BinaryIO:
    from securecomm.files import open_input

    return sys.stdin.buffer if src == "-" else open_input(Path(src))


def _encrypt_stream(source: BinaryIO, head: bytes, me: Any, to: Any, output: str | None, use_armor: bool,
                    force: bool) -> int:
    """Seal head + the rest of source in the streaming form; returns the bytes read."""
    from securecomm.crypto import stream

    head += read_up_to(source, -len(head) % stream.CHUNK_SIZE)  # whole chunks: the sealer then copies nothing
    counted = _Counter(blocks_from(source, head))
    with progress(counted, input_size(source), "encrypting") as blocks:
        sealed = stream.seal(blocks, me, to)
        write_all(armor_blocks(sealed) if use_armor else sealed, output, force=force)
    return counted.total


class _Counter:
    """Pass blocks through, adding up their length."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.total = blocks, 0

    def __iter__(self) -> Iterator[bytes]:
        for block in self.blocks:
            self.total += len(block)
            yield block


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


@click.command(epilog="Example: securecomm decrypt --from alice.pub -o note.txt note.sce\n\n"
                      "Example: securecomm decrypt --verify-first big.sce | tar x")
@click.option("--from", "sender", help="Sender identity line or file (else: your contacts and identities).")
@click.option("-o", "--output", help="Write the body to FILE (mode 0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--verify-first", is_flag=True,
              help="Large inputs to stdout: write nothing until the whole file verified (spools to a temp file).")
@name_option
@passphrase_file_option
@click.argument("input", default="-")
@pass_state
def decrypt(state: State, sender: str | None, output: str | None, force: bool, verify_first: bool, name: str,
            passphrase_file: str | None, input: str) -> None:
    """Open INPUT (binary or armored), verify signature and digest, write the body.

    The sender must be known: given with --from, or one of your contacts or
    identities. A message-sized envelope is checked whole before anything is
    written. With -o FILE, a file of any size goes to a private temporary
    file that replaces FILE only after every chunk and the signature over the
    whole file verify; on failure nothing is left at FILE.

    A large file to stdout: the sender's header signature is checked before
    the first byte, and each 64 KiB chunk is written once its tag verifies,
    so what a reader gets is always a prefix of what the sender sealed, in
    order (as with `age -d`). Whether it is all of it is known only at the
    end: a cut-off or tampered stream stops with an error and a non-zero
    exit after a partial write, and the last chunk is held back until the
    signature over the whole file verifies. Pass --verify-first (or use -o)
    when a partial output must never be seen.
    """
    from securecomm.crypto import envelope, stream
    from securecomm.crypto.envelope import MAX_ENVELOPE_SIZE
    from securecomm.errors import NotAnEnvelopeError, NotFoundError, UnknownSenderError, WrongRecipientError

    source = _open_source(input)
    limit = MAX_ENVELOPE_SIZE * 2  # armored input is ~4/3 larger; the parser checks exactly
    head = read_up_to(source, limit + 1)
    if len(head) > limit or stream.is_stream(dearmor(head)):
        _decrypt_stream(state, source, head, sender, output, force, name, passphrase_file, verify_first)
        return
    raw = dearmor(head)
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


def _decrypt_stream(state: State, source: BinaryIO, head: bytes, sender: str | None, output: str | None,
                    force: bool, name: str, passphrase_file: str | None, verify_first: bool) -> None:
    """An input too large for one envelope, or a streaming envelope: open it chunk by chunk."""
    from securecomm.crypto import stream
    from securecomm.errors import NotFoundError, UnknownSenderError, WrongRecipientError

    with progress(blocks_from(source, head), input_size(source), "decrypting") as blocks:
        if head.lstrip()[: len(ARMOR_BEGIN)] == ARMOR_BEGIN:
            blocks = dearmor_blocks(blocks)
        blocks = _require_stream(iter(blocks))
        try:
            me = load_identity(state, name, passphrase_file)
            opening = stream.open_stream(blocks, me, _known_senders(state, sender))
        except (NotFoundError, WrongRecipientError) as e:
            e.hint = _which_identity_fp(state, _peek_recipient(head)) or e.hint
            raise
        except UnknownSenderError as e:
            raise _unknown_sender(sender) from e
        write_all(opening, output, force=force, verify_first=verify_first)
    info(f"from {opening.sender.fingerprint_text}: {opening.length} bytes, every chunk and the signature "
         "verified")


def _require_stream(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """The blocks, after checking the first bytes are a stream's magic (else: too large for an envelope)."""
    from securecomm.crypto import stream

    first = b""
    for block in blocks:
        first += block
        if len(first) >= len(stream.MAGIC):
            break
    if not stream.is_stream(first):
        raise OversizedError("input is larger than the maximum envelope size")
    yield first
    yield from blocks


def _peek_recipient(head: bytes) -> bytes | None:
    """The recipient fingerprint of a binary version-1 stream header (armored: None, no hint; version 2
    names an account, not an identity: the stream's own hint says what to do)."""
    from securecomm.crypto import stream

    return head[68:100] if stream.is_stream(head) and len(head) >= 100 and head[4] == stream.VERSION else None


def _which_identity(state: State, raw: bytes) -> str | None:
    """The hint for an envelope sealed to another of your identities: which one, by --name."""
    from securecomm.crypto import envelope
    from securecomm.errors import SecurecommError

    try:
        recipient = envelope.parse(raw).header.recipient
    except SecurecommError:
        return None
    return _which_identity_fp(state, recipient)


def _which_identity_fp(state: State, recipient: bytes | None) -> str | None:
    """The hint naming which of your identities, by --name, `recipient` (a fingerprint) is."""
    from securecomm.crypto.identity import load_public
    from securecomm.crypto.integrity import same
    from securecomm.errors import SecurecommError

    if recipient is None:
        return None
    try:
        for pub in sorted(state.paths.identities_dir.glob("*.pub")):
            if same(load_public(pub).fingerprint, recipient):
                return f"it is sealed to your identity {pub.stem!r}: pass --name {pub.stem}"
    except (SecurecommError, OSError):
        return None
    return "it is sealed to none of your identities (`securecomm paths` shows where they live)"


def _unknown_sender(sender: str | None) -> Exception:
    """Suggest --from only when it was not given; else say the given sender is not the signer."""
    from securecomm.errors import SenderMismatchError, UnknownSenderError

    if sender is None:
        return UnknownSenderError("the sender of this envelope is not a known identity",
                                  hint="pass the sender's identity with --from LINE_OR_FILE")
    return SenderMismatchError("the envelope was not sent by the identity given with --from",
                               hint="check that --from names the sender's public identity, not yours or another's")
