"""The streaming envelope: files of any size in constant memory (docs/PROTOCOL.md 2.6).

Theory of operation
-------------------
    file_key  (32 random bytes) ──HPKE to the recipient──► sealed_key
    preamble  = fixed header (100) || u16 enc_len || enc || sealed_key
    header_sig = Ed25519(sender, HEADER_LABEL || preamble)
    payload_key, trailer_key = HKDF(file_key, label || SHA-256(preamble))
    chunk i   = ChaCha20-Poly1305(payload_key, u88 i || last, 64 KiB of body)
    trailer   = ChaCha20-Poly1305(trailer_key, 0^12,
                    Ed25519(sender, FINAL_LABEL || preamble || header_sig || u64 len || SHA-256(body)))

Version 2 (docs/PROTOCOL.md 2.6.1, files through the server to every device of
an account) is the same with no HPKE part: kem_id 0, enc_len 0, no sealed_key;
the file key travels only in the file notice (a version-2 direct message per
device, sealed to one-time prekeys), `recipient` is the receiving account's
user key fingerprint, and the four labels say v2.

This is age's payload (STREAM, Hoang-Reyhanitabar-Rogaway-Vizar 2015) with
signatures where age has a header MAC. Both directions are generators over
blocks of any size, so memory stays at a few chunks whatever the input; no
I/O happens here. The reader checks the header signature before the first
chunk, so each chunk it yields is the sender's; it holds the last chunk back
until the trailer's signature over the whole body verifies.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securecomm.crypto import envelope as E
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import (
    DecryptError,
    FormatError,
    NotAnEnvelopeError,
    SignatureError,
    TruncatedError,
    UnknownSuiteError,
    VersionError,
    WrongRecipientError,
)

MAGIC = b"SCS1"
VERSION = 1
INFO_LABEL = b"securecomm/v1/stream"
HEADER_LABEL = b"securecomm/v1/stream-header"
PAYLOAD_LABEL = b"securecomm/v1/stream-payload"
TRAILER_LABEL = b"securecomm/v1/stream-trailer"
FINAL_LABEL = b"securecomm/v1/stream-signature"
#: Version 2: the file key is detached (it travels in the file notice, docs/PROTOCOL.md 2.6.1).
VERSION_DETACHED = 2
#: kem_id of a version-2 stream: no KEM (nothing in the stream is sealed to a public key).
KEM_NONE = 0x0000

#: Plaintext per chunk: age's 64 KiB, large enough that Python's per-chunk cost
#: is small next to the AEAD, small enough that a reader holds little.
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
FILE_KEY_SIZE = 32
SEALED_KEY_SIZE = FILE_KEY_SIZE + TAG_SIZE
SIGNATURE_SIZE = 64
TRAILER_SIZE = SIGNATURE_SIZE + TAG_SIZE
FIXED_SIZE = E.HEADER_SIZE
_ENC_LEN = struct.Struct(">H")
_LENGTH = struct.Struct(">Q")
_TRAILER_NONCE = bytes(12)
#: Digest updates at least this large go to the digest thread; smaller ones are not worth a hand-off.
BACKGROUND_MIN = 256 * 1024
#: What the generators yield: fresh buffers, never reused, so a consumer may keep them.
Piece = bytes | bytearray
#: The counter is 11 bytes (88 bits), as in age; no real file comes near it.
MAX_CHUNKS = 1 << 88
#: Chunks sealed or opened per output block: fewer Python-level yields and
#: writes; 16 chunks is about 1 MiB held at once.
CHUNKS_PER_BLOCK = 16


def chunk_nonce(counter: int, last: bool) -> bytes:
    """STREAM nonce: 11-byte big-endian counter || 0x01 for the last chunk, else 0x00."""
    if counter >= MAX_CHUNKS:
        raise FormatError("stream has too many chunks")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


@dataclass(frozen=True)
class Labels:
    """The four purpose labels of one stream version."""

    header: bytes
    payload: bytes
    trailer: bytes
    final: bytes


LABELS = {
    VERSION: Labels(HEADER_LABEL, PAYLOAD_LABEL, TRAILER_LABEL, FINAL_LABEL),
    VERSION_DETACHED: Labels(b"securecomm/v2/stream-header", b"securecomm/v2/stream-payload",
                             b"securecomm/v2/stream-trailer", b"securecomm/v2/stream-signature"),
}


def derive_key(file_key: bytes, label: bytes, preamble: bytes) -> bytes:
    """HKDF-SHA256 of the file key, bound to this stream's preamble."""
    info = label + hashlib.sha256(preamble).digest()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(file_key)


def final_transcript(preamble: bytes, header_sig: bytes, length: int, digest: bytes,
                     label: bytes = FINAL_LABEL) -> bytes:
    return label + preamble + header_sig + _LENGTH.pack(length) + digest


@dataclass(frozen=True)
class StreamHeader:
    """The parsed preamble of a stream (signature checked only by `Opening`)."""

    header: E.Header
    preamble: bytes
    enc: bytes
    sealed_key: bytes
    header_sig: bytes

    @property
    def size(self) -> int:
        return len(self.preamble) + SIGNATURE_SIZE

    @property
    def version(self) -> int:
        return self.preamble[len(MAGIC)]


def sealed_size(length: int, kem: str | None) -> int:
    """The exact size of the stream that seals `length` bytes of body to a `kem` identity: preamble,
    header signature, ceil(length / CHUNK_SIZE) chunks (one empty chunk for an empty body), each with
    its tag, and the trailer. Lets a sender announce the size before sealing (client/files.py)."""
    chunks = max(1, -(-length // CHUNK_SIZE))
    key_part = 0 if kem is None else E.ENC_SIZES[kem] + SEALED_KEY_SIZE
    return FIXED_SIZE + _ENC_LEN.size + key_part + SIGNATURE_SIZE + length + chunks * TAG_SIZE + TRAILER_SIZE


def sealed_size_detached(length: int) -> int:
    """`sealed_size` for a version-2 stream (no enc, no sealed_key)."""
    return sealed_size(length, None)


def is_stream(prefix: bytes) -> bool:
    """True when `prefix` begins with the streaming magic."""
    return prefix[: len(MAGIC)] == MAGIC


# -- sealing ------------------------------------------------------------------------------
def _preamble(sender: PrivateIdentity, recipient: PublicIdentity, file_key: bytes, file_id: bytes,
              timestamp_ms: int) -> bytes:
    fixed = E._HEADER.pack(MAGIC, VERSION, E.KEM_IDS[recipient.kem], E.KDF_HKDF_SHA256,
                           E.AEAD_CHACHA20_POLY1305, 0, file_id, timestamp_ms,
                           sender.public.fingerprint, recipient.fingerprint)
    sealed = E._SUITES[recipient.kem].encrypt(file_key, recipient.hpke_key, info=INFO_LABEL + fixed)
    return fixed + _ENC_LEN.pack(E.ENC_SIZES[recipient.kem]) + sealed


def _preamble_detached(sender: PrivateIdentity, account: bytes, file_id: bytes, timestamp_ms: int) -> bytes:
    """Version 2: the fixed part with kem_id 0 and `recipient` = the account's user key fingerprint,
    then enc_len 0; no enc and no sealed_key (the key travels in the notice)."""
    if len(account) != 32:
        raise FormatError("a stream's recipient account is a 32-byte user key fingerprint")
    fixed = E._HEADER.pack(MAGIC, VERSION_DETACHED, KEM_NONE, E.KDF_HKDF_SHA256, E.AEAD_CHACHA20_POLY1305, 0,
                           file_id, timestamp_ms, sender.public.fingerprint, account)
    return fixed + _ENC_LEN.pack(0)


class _Digest:
    """SHA-256 of the body, computed on a second thread, in order, at most RUNS_AHEAD runs behind.

    hashlib releases the GIL on large updates, so the digest of one run is
    computed while the AEAD works on the next: on two cores the digest of the
    whole plaintext costs almost no wall time. Data handed to update() must
    not change afterwards (runs are immutable bytes or fresh buffers).
    """

    RUNS_AHEAD = 2  # bounds memory: at most this many runs are referenced by pending updates

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) < BACKGROUND_MIN:
            self._drain(0)
            self._hasher.update(data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="securecomm-digest")
        self._pending.append(self._pool.submit(self._hasher.update, data))
        self._drain(self.RUNS_AHEAD)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.popleft().result()

    def digest(self) -> bytes:
        self._drain(0)
        if self._pool is not None:
            self._pool.shutdown()
        return self._hasher.digest()


class _Sealer:
    """Seals chunks in order; knows the payload key, the counter and the running digest."""

    def __init__(self, file_key: bytes, preamble: bytes, labels: Labels = LABELS[VERSION]) -> None:
        self.aead = ChaCha20Poly1305(derive_key(file_key, labels.payload, preamble))
        self.trailer = ChaCha20Poly1305(derive_key(file_key, labels.trailer, preamble))
        self.counter = 0
        self.length = 0
        self.hasher = _Digest()

    def seal(self, piece: bytes | memoryview, last: bool) -> bytes:
        self.hasher.update(piece)
        self.length += len(piece)
        out = self.aead.encrypt(chunk_nonce(self.counter, last), piece, None)
        self.counter += 1
        return out

    def seal_run(self, data: bytes, count: int) -> bytearray:  # bytes: immutable while the digest thread reads
        """Seal the first `count` full chunks of `data`, none of them the last, into one new buffer.
        (encrypt_into and one digest update per run: Python's cost per chunk is what limits speed.)"""
        view, out = memoryview(data), bytearray(count * SEALED_CHUNK_SIZE)
        target = memoryview(out)
        self.hasher.update(memoryview(data)[: count * CHUNK_SIZE])  # its own view: the digest thread holds it
        with view, target:
            for i in range(count):
                self.aead.encrypt_into(chunk_nonce(self.counter + i, False),
                                       view[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE], None,
                                       target[i * SEALED_CHUNK_SIZE : (i + 1) * SEALED_CHUNK_SIZE])
        self.counter += count
        self.length += count * CHUNK_SIZE
        return out

    def open_run(self, data: bytearray, count: int) -> bytearray:
        """Open the first `count` sealed chunks of `data`, none of them the last, into one new buffer."""
        view, out = memoryview(data), bytearray(count * CHUNK_SIZE)
        target = memoryview(out)
        with view, target:
            for i in range(count):
                try:
                    self.aead.decrypt_into(chunk_nonce(self.counter, False),
                                           view[i * SEALED_CHUNK_SIZE : (i + 1) * SEALED_CHUNK_SIZE], None,
                                           target[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE])
                except InvalidTag as e:
                    raise DecryptError("a stream chunk does not decrypt: the file was cut short, changed, or "
                                       "sealed to another key") from e
                self.counter += 1
        self.hasher.update(out)
        self.length += count * CHUNK_SIZE
        return out


#: The background SHA-256 above, for callers that hash a stream's pieces as they go (client/files.py).
BackgroundDigest = _Digest


def seal(blocks: Iterable[bytes], sender: PrivateIdentity, recipient: PublicIdentity, *,
         file_id: bytes | None = None, timestamp_ms: int | None = None,
         file_key: bytes | None = None, summary: Callable[[int, bytes], None] | None = None) -> Iterator[Piece]:
    """Yield the stream sealing the concatenation of `blocks` to `recipient`, signed by `sender`.

    `summary(length, sha256)` is told the plaintext's length and digest (the ones
    the final signature covers) before the trailer is yielded, so that a caller
    needing them does not hash the plaintext a second time.
    `file_key`, `file_id` and `timestamp_ms` are seams for test vectors; leave
    them unset otherwise (a file key must never be reused).
    """
    file_key = os.urandom(FILE_KEY_SIZE) if file_key is None else file_key
    file_id = E.new_msg_id() if file_id is None else file_id
    if len(file_key) != FILE_KEY_SIZE or len(file_id) != E.MSG_ID_SIZE:
        raise FormatError("file key must be 32 bytes and file id 16")
    preamble = _preamble(sender, recipient, file_key, file_id,
                         E.now_ms() if timestamp_ms is None else timestamp_ms)
    yield from _sealed(blocks, sender, file_key, preamble, LABELS[VERSION], summary)


def seal_detached(blocks: Iterable[bytes], sender: PrivateIdentity, account: bytes, file_key: bytes, *,
                  file_id: bytes | None = None, timestamp_ms: int | None = None,
                  summary: Callable[[int, bytes], None] | None = None) -> Iterator[Piece]:
    """Yield the version-2 stream (docs/PROTOCOL.md 2.6.1) of `blocks` for the account whose user key
    fingerprint is `account`, signed by `sender` (the sending device). Nothing in it opens the file key:
    the caller sends `file_key` in the file notice, to each device, sealed like any direct message.
    `file_key` must be 32 fresh random bytes, never used for another stream."""
    file_id = E.new_msg_id() if file_id is None else file_id
    if len(file_key) != FILE_KEY_SIZE or len(file_id) != E.MSG_ID_SIZE:
        raise FormatError("file key must be 32 bytes and file id 16")
    preamble = _preamble_detached(sender, account, file_id, E.now_ms() if timestamp_ms is None else timestamp_ms)
    yield from _sealed(blocks, sender, file_key, preamble, LABELS[VERSION_DETACHED], summary)


def _sealed(blocks: Iterable[bytes], sender: PrivateIdentity, file_key: bytes, preamble: bytes, labels: Labels,
            summary: Callable[[int, bytes], None] | None) -> Iterator[Piece]:
    header_sig = sender.sign(labels.header + preamble)
    yield preamble + header_sig
    sealer = _Sealer(file_key, preamble, labels)
    yield from _seal_chunks(blocks, sealer)
    digest = sealer.hasher.digest()
    if summary is not None:
        summary(sealer.length, digest)
    final = sender.sign(final_transcript(preamble, header_sig, sealer.length, digest, labels.final))
    yield sealer.trailer.encrypt(_TRAILER_NONCE, final, None)


def _seal_chunks(blocks: Iterable[bytes], sealer: _Sealer) -> Iterator[Piece]:
    """Cut blocks into chunks. The newest chunk is kept back until we know whether it is the last;
    blocks that are whole chunks (as the CLI reads them) are sealed without being copied."""
    held = b""
    for block in blocks:
        if not block:
            continue
        if held and len(held) % CHUNK_SIZE == 0:  # a block follows, so none of held is the last
            yield sealer.seal_run(held, len(held) // CHUNK_SIZE)
            held = bytes(block)
            continue
        held += block
        count = (len(held) - 1) // CHUNK_SIZE  # keep at least one byte: it may belong to the last chunk
        if count:
            yield sealer.seal_run(held, count)
            held = held[count * CHUNK_SIZE :]
    count = max(0, (len(held) - 1) // CHUNK_SIZE)
    if count:
        yield sealer.seal_run(held, count)
        held = held[count * CHUNK_SIZE :]
    yield sealer.seal(held, last=True)


# -- opening ------------------------------------------------------------------------------
class _Pull:
    """Exact reads from an iterator of blocks of any size."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self.blocks = iter(blocks)
        self.buf = bytearray()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            block = next(self.blocks, None)
            if block is None:
                raise TruncatedError("stream is truncated")
            self.buf += block
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def parse_header(pull: _Pull) -> StreamHeader:
    """Read and check the preamble and header signature fields (lengths and constants only)."""
    first = pull.take(len(MAGIC))
    if first != MAGIC:
        raise NotAnEnvelopeError("input is not a securecomm stream")
    fixed = first + pull.take(FIXED_SIZE - len(MAGIC))
    _, version, kem_id, kdf_id, aead_id, flags, file_id, ts, sender, recipient = E._HEADER.unpack(fixed)
    if version not in LABELS:
        raise VersionError(f"unsupported stream version {version}")
    kem = E.KEM_BY_WIRE.get(kem_id) if version == VERSION else ("" if kem_id == KEM_NONE else None)
    if kem is None or kdf_id != E.KDF_HKDF_SHA256 or aead_id != E.AEAD_CHACHA20_POLY1305:
        raise UnknownSuiteError(f"unknown suite kem=0x{kem_id:04x} kdf=0x{kdf_id:04x} aead=0x{aead_id:04x}")
    if flags != 0:
        raise FormatError("reserved flags are set")
    enc_len_raw = pull.take(_ENC_LEN.size)
    if version == VERSION_DETACHED:  # no enc, no sealed_key: the key is in the notice
        if _ENC_LEN.unpack(enc_len_raw)[0] != 0:
            raise FormatError("a version 2 stream carries no encapsulated key")
        return StreamHeader(E.Header(kem, file_id, ts, sender, recipient), fixed + enc_len_raw, b"", b"",
                            pull.take(SIGNATURE_SIZE))
    if _ENC_LEN.unpack(enc_len_raw)[0] != E.ENC_SIZES[kem]:
        raise FormatError("encapsulated key has the wrong length for its suite")
    enc = pull.take(E.ENC_SIZES[kem])
    sealed_key = pull.take(SEALED_KEY_SIZE)
    header_sig = pull.take(SIGNATURE_SIZE)
    return StreamHeader(E.Header(kem, file_id, ts, sender, recipient), fixed + enc_len_raw + enc + sealed_key,
                        enc, sealed_key, header_sig)


class Opening:
    """A stream whose header verified; iterate it for the body, in verified pieces.

    Construction does steps 1-3 of docs/PROTOCOL.md 2.6 (parse, recipient,
    sender, header signature, file key); iteration does 4-5. A version-1
    stream needs `recipient` (its HPKE key opens the file key); a version-2
    stream (2.6.1) needs `file_key` (from the notice) and `account` (the
    reader's own user key fingerprint), and is refused without them.
    """

    def __init__(self, blocks: Iterable[bytes], recipient: PrivateIdentity | None, senders: E.SenderLookup, *,
                 file_key: bytes | None = None, account: bytes | None = None) -> None:
        self._pull = _Pull(blocks)
        self.header = parse_header(self._pull)
        h, version = self.header.header, self.header.version
        self.labels = LABELS[version]
        if version == VERSION_DETACHED:
            if file_key is None or account is None:
                raise WrongRecipientError("this stream's key travels in a file notice (a file sent through the "
                                          "server), not in the stream",
                                          hint="on a device of its recipient: `securecomm inbox`, then "
                                               "`securecomm fetch ID`")
            if not same(h.recipient, account):
                raise WrongRecipientError("stream is addressed to another account")
        elif recipient is None or not same(h.recipient, recipient.public.fingerprint) or h.kem != recipient.kem:
            raise WrongRecipientError("stream is addressed to another identity")
        self.sender = E._resolve(senders, h.sender)
        try:
            self.sender.verify_key.verify(self.header.header_sig, self.labels.header + self.header.preamble)
        except InvalidSignature as e:
            raise SignatureError("stream header signature does not verify") from e
        if version == VERSION_DETACHED:
            assert file_key is not None
            if len(file_key) != FILE_KEY_SIZE:
                raise FormatError("stream file key has the wrong length")
            self.file_key = file_key
        else:
            assert recipient is not None
            #: The recovered file key: a file notice (docs/PROTOCOL.md 4.4) announces it too, and must agree.
            self.file_key = _open_file_key(self.header, recipient)
        self._sealer = _Sealer(self.file_key, self.header.preamble, self.labels)  # same keys; used to open here
        self.digest: bytes | None = None

    @property
    def length(self) -> int:
        return self._sealer.length

    def __iter__(self) -> Iterator[Piece]:
        pending = self._pull.buf  # what the header read left over comes first
        for block in self._pull.blocks:
            pending += block
            if out := self._open_ready(pending):
                yield out
        if out := self._open_ready(pending):
            yield out
        yield self._finish(bytes(pending))

    def _open_ready(self, pending: bytearray) -> bytearray:
        """Open (and drop from `pending`) the chunks that are surely not the last:
        those followed by more than the trailer."""
        count = (len(pending) - TRAILER_SIZE - 1) // SEALED_CHUNK_SIZE
        if count <= 0:
            return bytearray()
        out = self._sealer.open_run(pending, count)
        del pending[: count * SEALED_CHUNK_SIZE]
        return out

    def _open_one(self, sealed: bytes | memoryview, last: bool) -> bytes:
        s = self._sealer
        try:
            piece = s.aead.decrypt(chunk_nonce(s.counter, last), sealed, None)
        except InvalidTag as e:
            raise DecryptError("a stream chunk does not decrypt: the file was cut short, changed, or sealed "
                                   "to another key") from e
        s.counter += 1
        s.length += len(piece)
        s.hasher.update(piece)
        return piece

    def _finish(self, rest: bytes) -> bytes:
        if len(rest) < TAG_SIZE + TRAILER_SIZE:
            raise TruncatedError("stream is truncated")
        last = self._open_one(rest[:-TRAILER_SIZE], last=True)
        if not last and self._sealer.counter > 1:
            raise FormatError("stream ends with an empty chunk")
        self._verify_trailer(rest[-TRAILER_SIZE:])
        return last

    def _verify_trailer(self, trailer: bytes) -> None:
        s = self._sealer
        try:
            final = s.trailer.decrypt(_TRAILER_NONCE, trailer, None)
        except InvalidTag as e:
            raise DecryptError("stream trailer does not decrypt") from e
        digest = s.hasher.digest()
        transcript = final_transcript(self.header.preamble, self.header.header_sig, s.length, digest,
                                      self.labels.final)
        try:
            self.sender.verify_key.verify(final, transcript)
        except InvalidSignature as e:
            raise SignatureError("stream signature does not verify") from e
        self.digest = digest


def _open_file_key(header: StreamHeader, recipient: PrivateIdentity) -> bytes:
    fixed = header.preamble[:FIXED_SIZE]
    try:
        key = E._SUITES[header.header.kem].decrypt(header.enc + header.sealed_key, recipient.hpke_key,
                                                   info=INFO_LABEL + fixed)
    except (InvalidTag, ValueError) as e:  # ValueError: an enc that is not a valid point
        raise DecryptError("stream file key does not decrypt") from e
    if len(key) != FILE_KEY_SIZE:
        raise FormatError("stream file key has the wrong length")
    return key


def open_stream(blocks: Iterable[bytes], recipient: PrivateIdentity | None, senders: E.SenderLookup, *,
                file_key: bytes | None = None, account: bytes | None = None) -> Opening:
    """Check a stream's header and return it ready to iterate (see `Opening`)."""
    return Opening(blocks, recipient, senders, file_key=file_key, account=account)
