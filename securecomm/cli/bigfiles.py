"""Inputs larger than one envelope: read, armor and write in pieces (docs/PROTOCOL.md 2.6).

`encrypt` and `decrypt` (cli/offline.py) read the first MAX_BODY_SIZE + 1
bytes; anything that fits stays on the single-shot path, unchanged. The rest
goes through here: blocks of READ_SIZE bytes in, blocks out, so memory is a
few blocks whatever the size of the file or pipe.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import click

from securecomm.errors import FormatError

#: Bytes read from the input at a time: 16 chunks of 64 KiB, so the sealer
#: works in runs and Python's per-call cost is spread over a megabyte.
READ_SIZE = 16 * 64 * 1024
#: Inputs at least this large get a progress bar (only when stderr is a terminal).
PROGRESS_MIN = 4 * 1024 * 1024
#: Longest armored line accepted from a stream; ours are 64 characters.
MAX_ARMOR_LINE = 4096
ARMOR_BEGIN = b"-----BEGIN SECURECOMM ENVELOPE-----"
ARMOR_END = b"-----END SECURECOMM ENVELOPE-----"
#: Armor lines of 64 characters carry 48 bytes; encode whole lines at a time.
_LINE_BYTES = 48


def read_up_to(source: BinaryIO, limit: int) -> bytes:
    """Up to `limit` bytes, reading until that much or end of input (pipes return less per read)."""
    parts, got = [], 0
    while got < limit:
        part = source.read(limit - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def blocks_from(source: BinaryIO, first: bytes = b"") -> Iterator[bytes]:
    """`first`, then the rest of `source` in READ_SIZE blocks."""
    if first:
        yield first
    while block := source.read(READ_SIZE):
        yield block


def input_size(source: BinaryIO) -> int | None:
    """The size of a regular file, None for a pipe or terminal."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        st = os.fstat(source.fileno())
        import stat

        if stat.S_ISREG(st.st_mode):
            return st.st_size
    return None


@contextlib.contextmanager
def progress(blocks: Iterable[bytes], size: int | None, label: str) -> Iterator[Iterable[bytes]]:
    """`blocks`, counted on a Click progress bar on stderr when that is a terminal and the input is large."""
    if size is None or size < PROGRESS_MIN or not sys.stderr.isatty():
        yield blocks
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        def counted() -> Iterator[bytes]:
            for block in blocks:
                bar.update(len(block))
                yield block
        yield counted()


# -- armor, in pieces (docs/PROTOCOL.md 5.6) ----------------------------------------------
def armor_blocks(blocks: Iterable[bytes | bytearray]) -> Iterator[bytes]:
    """The same text as offline.armor() of the concatenation, produced a block at a time."""
    yield ARMOR_BEGIN + b"\n"
    pending = b""
    for block in blocks:
        pending += block
        cut = len(pending) - len(pending) % _LINE_BYTES
        if cut:
            yield _armor_lines(pending[:cut])
            pending = pending[cut:]
    if pending:
        yield _armor_lines(pending)
    yield ARMOR_END + b"\n"


def _armor_lines(data: bytes) -> bytes:
    b64 = base64.b64encode(data)
    return b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))


def dearmor_blocks(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Decode armored text given in blocks; strict base64, END line required at the end."""
    lines = _lines(blocks)
    for line in lines:
        if line.strip():
            if line.strip() != ARMOR_BEGIN:
                raise FormatError("armored envelope does not start with the BEGIN line")
            break
    carry, ended = b"", False
    for line in lines:
        text = line.strip()
        if ended:
            if text:
                raise FormatError("armored envelope has text after the END line")
            continue
        if text == ARMOR_END:
            ended = True
            continue
        carry += b"".join(text.split())
        cut = len(carry) - len(carry) % 4
        if cut:
            yield _b64(carry[:cut])
            carry = carry[cut:]
    if not ended or carry:
        raise FormatError("armored envelope is truncated")


def _b64(text: bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise FormatError("armored envelope is not valid base64") from e


def _lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for block in blocks:
        pending += block
        *whole, pending = pending.split(b"\n")
        yield from whole
        if len(pending) > MAX_ARMOR_LINE:
            raise FormatError(f"armored line is longer than {MAX_ARMOR_LINE} characters")
    yield pending


# -- output ------------------------------------------------------------------------------
def write_all(pieces: Iterable[bytes | bytearray], output: str | None, *, force: bool,
              verify_first: bool = False) -> None:
    """Write pieces to FILE atomically, or to stdout as they come (or, with verify_first, after the last)."""
    from securecomm.files import AtomicOutput

    if output not in (None, "-"):
        with AtomicOutput(Path(output), force=force) as out:
            for piece in pieces:
                out.write(piece)
            out.commit()
        return
    stdout = sys.stdout.buffer
    if not verify_first:
        for piece in pieces:
            stdout.write(piece)
        stdout.flush()
        return
    # An unnamed temp file (0600, unlinked at once where the OS allows): nothing reaches
    # stdout until the last piece verified, and memory stays constant.
    with tempfile.TemporaryFile() as spool:
        for piece in pieces:
            spool.write(piece)
        spool.seek(0)
        shutil.copyfileobj(spool, stdout, READ_SIZE)
    stdout.flush()
