"""The message envelope: HPKE seal to the recipient + Ed25519 signature by the sender.

Theory of operation
-------------------
    body ──sha256──► digest
    plaintext = digest(32) || body
    header    = fixed 100 bytes (version, suite, flags, id, time, sender, recipient)
    enc, ct   = HPKE.SealBase(pkR, info = INFO_LABEL || header, plaintext)
    signature = Ed25519(sender, SIGN_LABEL || header || u16 len(enc) || u32 len(ct) || enc || ct)
    envelope  = header || u16 len(enc) || u32 len(ct) || enc || ct || signature

`cryptography`'s HPKE API takes no `aad`, so the header is bound to the
ciphertext through HPKE's `info` (any change to it changes the key schedule,
and the AEAD tag fails) and, for everyone, through the signature. The reader
parses with every length checked against the suite and the total before it
touches a key, checks the recipient, verifies the signature against the
sender's known key, and only then decrypts; the digest is recomputed and
compared in constant time. No path returns plaintext that failed a check.

See docs/PROTOCOL.md for the byte-by-byte layout and a worked example.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke

from securecomm import timeutil
from securecomm.crypto.identity import KEMS, PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import DIGEST_SIZE, same, sha256
from securecomm.crypto.signing import verify_signature
from securecomm.errors import (
    DecryptError,
    DigestError,
    FormatError,
    NotAnEnvelopeError,
    OversizedError,
    TrailingDataError,
    TruncatedError,
    UnknownSenderError,
    UnknownSuiteError,
    VersionError,
    WrongRecipientError,
)

MAGIC = b"SCE1"
VERSION = 1
INFO_LABEL = b"securecomm/v1/envelope"
SIGN_LABEL = b"securecomm/v1/envelope-signature"

# RFC 9180 registry identifiers. ChaCha20-Poly1305 is the AEAD for every suite:
# it is constant-time in software on every CPU (AES-GCM is only safe and fast
# with AES instructions), and it is the AEAD of the hybrid suite's published
# test vectors.
KDF_HKDF_SHA256 = 0x0001
AEAD_CHACHA20_POLY1305 = 0x0003
KEM_IDS = {"mlkem768-x25519": 0x647A, "x25519": 0x0020, "p256": 0x0010}
KEM_BY_WIRE = {v: k for k, v in KEM_IDS.items()}
_SUITES = {
    name: hpke.Suite(KEMS[name][2], hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305) for name in KEMS
}
ENC_SIZES = {name: KEMS[name][2].enc_length() for name in KEMS}

#   magic 4 | version u8 | kem u16 | kdf u16 | aead u16 | flags u8 | msg_id 16 |
#   timestamp_ms u64 | sender fp 32 | recipient fp 32          = 100 bytes
_HEADER = struct.Struct(">4sBHHHB16sQ32s32s")
HEADER_SIZE = _HEADER.size
_LENGTHS = struct.Struct(">HI")
TAG_SIZE = 16
SIGNATURE_SIZE = 64
MSG_ID_SIZE = 16

#: Largest envelope accepted or produced. It must fit in one 1 MiB wire frame
#: with room for the frame's own fields, hence 1 MiB less 4 KiB.
MAX_ENVELOPE_SIZE = 1024 * 1024 - 4096
_OVERHEAD_MAX = HEADER_SIZE + _LENGTHS.size + max(ENC_SIZES.values()) + TAG_SIZE + DIGEST_SIZE + SIGNATURE_SIZE
#: Largest body: whatever the largest suite leaves of MAX_ENVELOPE_SIZE.
MAX_BODY_SIZE = MAX_ENVELOPE_SIZE - _OVERHEAD_MAX
MIN_ENVELOPE_SIZE = HEADER_SIZE + _LENGTHS.size + min(ENC_SIZES.values()) + TAG_SIZE + DIGEST_SIZE + SIGNATURE_SIZE


@dataclass(frozen=True)
class Header:
    kem: str
    msg_id: bytes
    timestamp_ms: int
    sender: bytes
    recipient: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, KEM_IDS[self.kem], KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305, 0,
                            self.msg_id, self.timestamp_ms, self.sender, self.recipient)


@dataclass(frozen=True)
class Envelope:
    """A parsed, structurally valid envelope whose crypto is not yet checked."""

    header: Header
    enc: bytes
    ciphertext: bytes
    signature: bytes
    raw: bytes

    @property
    def signed_part(self) -> bytes:
        return self.raw[:-SIGNATURE_SIZE]

    def verify(self, sender: PublicIdentity) -> None:
        """Check the signature against `sender`, who must be the named sender."""
        if not same(sender.fingerprint, self.header.sender):
            raise UnknownSenderError("envelope is not from the expected sender")
        verify_signature(sender.verify_key, self.signature, SIGN_LABEL + self.signed_part, "envelope")


@dataclass(frozen=True)
class Opened:
    header: Header
    sender: PublicIdentity
    body: bytes
    digest: bytes


def parse(data: bytes) -> Envelope:
    """Split an envelope into its fields, checking every length and constant."""
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_SIZE:
        raise OversizedError(f"envelope is larger than {MAX_ENVELOPE_SIZE} bytes")
    if data[: len(MAGIC)] != MAGIC and not MAGIC.startswith(data):
        # Checked before the length, so a text file is "not an envelope", not "truncated".
        raise NotAnEnvelopeError("input is not a securecomm envelope")
    if len(data) < HEADER_SIZE + _LENGTHS.size:
        raise TruncatedError("envelope is truncated")
    magic, version, kem_id, kdf_id, aead_id, flags, msg_id, ts, sender, recipient = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("not a securecomm envelope")
    if version != VERSION:
        raise VersionError(f"unsupported envelope version {version}")
    kem = KEM_BY_WIRE.get(kem_id)
    if kem is None or kdf_id != KDF_HKDF_SHA256 or aead_id != AEAD_CHACHA20_POLY1305:
        raise UnknownSuiteError(f"unknown suite kem=0x{kem_id:04x} kdf=0x{kdf_id:04x} aead=0x{aead_id:04x}")
    if flags != 0:
        raise FormatError("reserved flags are set")
    enc_len, ct_len = _LENGTHS.unpack_from(data, HEADER_SIZE)
    if enc_len != ENC_SIZES[kem]:
        raise FormatError("encapsulated key has the wrong length for its suite")
    if ct_len < TAG_SIZE + DIGEST_SIZE:
        raise FormatError("ciphertext is too short")
    start = HEADER_SIZE + _LENGTHS.size
    end = start + enc_len + ct_len + SIGNATURE_SIZE
    if len(data) < end:
        raise TruncatedError("envelope is truncated")
    if len(data) > end:
        raise TrailingDataError("envelope has trailing bytes")
    header = Header(kem, msg_id, ts, sender, recipient)
    return Envelope(header, data[start : start + enc_len], data[start + enc_len : end - SIGNATURE_SIZE],
                    data[end - SIGNATURE_SIZE :], data)


def peek_msg_id(data: bytes) -> bytes | None:
    """Bytes 12..27 of something meant to be an envelope, even one that does not parse:
    an error about it can then name the message the client is waiting on."""
    return bytes(data[12:28]) if len(data) >= 28 else None


def new_msg_id() -> bytes:
    return os.urandom(MSG_ID_SIZE)


def now_ms() -> int:
    return timeutil.now_ms()


def seal(body: bytes, sender: PrivateIdentity, recipient: PublicIdentity, *,
         msg_id: bytes | None = None, timestamp_ms: int | None = None) -> bytes:
    """Encrypt `body` to `recipient` and sign it as `sender`."""
    if len(body) > MAX_BODY_SIZE:
        raise OversizedError(f"message is larger than {MAX_BODY_SIZE} bytes")
    msg_id = new_msg_id() if msg_id is None else msg_id
    if len(msg_id) != MSG_ID_SIZE:
        raise FormatError("message id must be 16 bytes")
    header = Header(recipient.kem, msg_id, now_ms() if timestamp_ms is None else timestamp_ms,
                    sender.public.fingerprint, recipient.fingerprint).pack()
    sealed = _SUITES[recipient.kem].encrypt(sha256(body) + body, recipient.hpke_key, info=INFO_LABEL + header)
    enc_len = ENC_SIZES[recipient.kem]
    signed = header + _LENGTHS.pack(enc_len, len(sealed) - enc_len) + sealed
    return signed + sender.sign(SIGN_LABEL + signed)


SenderLookup = Callable[[bytes], PublicIdentity | None] | Mapping[bytes, PublicIdentity] | PublicIdentity


def _resolve(senders: SenderLookup, fingerprint: bytes) -> PublicIdentity:
    if isinstance(senders, PublicIdentity):
        found: PublicIdentity | None = senders if same(senders.fingerprint, fingerprint) else None
    elif isinstance(senders, Mapping):
        found = senders.get(fingerprint)
    else:
        found = senders(fingerprint)
    if found is None:
        raise UnknownSenderError("the sender of this envelope is not a known identity")
    return found


def open_envelope(data: bytes | Envelope, recipient: PrivateIdentity, senders: SenderLookup) -> Opened:
    """Parse, check recipient and signature, decrypt, check digest, in that order."""
    env = data if isinstance(data, Envelope) else parse(data)
    h = env.header
    if not same(h.recipient, recipient.public.fingerprint) or h.kem != recipient.kem:
        raise WrongRecipientError("envelope is addressed to another identity")
    sender = _resolve(senders, h.sender)
    env.verify(sender)
    try:
        plaintext = _SUITES[h.kem].decrypt(env.enc + env.ciphertext, recipient.hpke_key,
                                           info=INFO_LABEL + env.raw[:HEADER_SIZE])
    except (InvalidTag, ValueError) as e:  # ValueError: an enc that is not a valid point
        raise DecryptError("envelope does not decrypt") from e
    digest, body = plaintext[:DIGEST_SIZE], plaintext[DIGEST_SIZE:]
    if not same(digest, sha256(body)):
        raise DigestError("message digest does not match its body")
    return Opened(h, sender, body, digest)
