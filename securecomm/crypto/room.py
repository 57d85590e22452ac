"""Room messages with sender keys: encrypt once, sign once, relay the same bytes to all.

Theory of operation (after Signal's sender keys)
------------------------------------------------
Each member of a room owns a *sender key*: a random key id and a 32-byte chain
key with an iteration counter. It hands the sender key to every other member
sealed in an ordinary envelope (HPKE to their identity, signed). To send, it
ratchets the chain:

    message_key = HMAC-SHA256(chain_key, 0x01)
    chain_key   = HMAC-SHA256(chain_key, 0x02)        iteration += 1

then derives a ChaCha20-Poly1305 key and nonce from message_key with HKDF,
encrypts SHA-256(body) || body once and signs the whole payload once with
its Ed25519 key. The server relays the same bytes to every member, so the
cost does not grow with the room, and it never holds a chain key. A reader
verifies the signature against the sender's identity before it touches the
chain, then ratchets its copy forward (at most MAX_SKIP steps, keeping the
skipped message keys for late arrivals). Old chain keys are overwritten, so
a key stolen later cannot decrypt earlier messages. When anyone leaves, every
remaining member makes a new sender key and hands it out again.

Payload layout (all big-endian):
    version u8 (1) | msg_id 16 | timestamp_ms u64 | key_id 4 | iteration u32 | sender fp 32
    | ct_len u32 | ciphertext (ct_len, tag included) | Ed25519 signature 64
Signed: ROOM_LABEL || len(room) u8 || room || everything before the signature.
AEAD associated data: the same prefix up to and including ct_len.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import DIGEST_SIZE, same, sha256
from securecomm.crypto.signing import verify_signature
from securecomm.errors import (
    DecryptError,
    DigestError,
    FormatError,
    TruncatedError,
    UnknownSenderError,
    VersionError,
)

ROOM_LABEL = b"securecomm/v1/room"
KEY_LABEL = b"securecomm/v1/room-message-key"
SENDER_KEY_MAGIC = b"SCK1"
#: A sender key that also names its writer's account (docs/PROTOCOL.md 6.6): what version 2 hands out.
SENDER_KEY_MAGIC_V2 = b"SCK2"
VERSION = 1
#: How far a reader ratchets ahead for missing messages; bounds CPU per payload.
MAX_SKIP = 2000
_HEADER = struct.Struct(">B16sQ4sI32sI")
SIGNATURE_SIZE = 64
TAG_SIZE = 16


def _chain_step(chain_key: bytes) -> tuple[bytes, bytes]:
    return (hmac.new(chain_key, b"\x01", hashlib.sha256).digest(),
            hmac.new(chain_key, b"\x02", hashlib.sha256).digest())


def _aead(message_key: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    okm = HKDF(hashes.SHA256(), 44, salt=None, info=KEY_LABEL).derive(message_key)
    return ChaCha20Poly1305(okm[:32]), okm[32:]


def _room_prefix(room: str) -> bytes:
    raw = room.encode("ascii")
    return ROOM_LABEL + bytes([len(raw)]) + raw


@dataclass
class SenderKey:
    key_id: bytes
    chain_key: bytes
    iteration: int = 0
    skipped: dict[int, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls) -> SenderKey:
        return cls(os.urandom(4), os.urandom(32))

    def encode(self, room: str, writer: str | None = None) -> bytes:
        """SCK1 (room only), or with `writer` SCK2: the writer's account first, so that a server listing one
        account's device under another cannot hand out that device's key, and so its room lines, as the
        other's (the same reason as a direct message's writer, 6.6)."""
        raw = room.encode("ascii")
        tail = bytes([len(raw)]) + raw + self.key_id + struct.pack(">I", self.iteration) + self.chain_key
        if writer is None:
            return SENDER_KEY_MAGIC + tail
        w = writer.encode("ascii")
        return SENDER_KEY_MAGIC_V2 + bytes([len(w)]) + w + tail

    @classmethod
    def decode_with_writer(cls, data: bytes) -> tuple[str | None, str, SenderKey]:
        """(the writer's account, None for SCK1; the room; the key)."""
        if data.startswith(SENDER_KEY_MAGIC_V2) and len(data) > 5 and 1 <= data[4] <= 32 and len(data) > 5 + data[4]:
            n = data[4]
            writer = data[5 : 5 + n].decode("ascii", "replace")
            return (writer, *cls.decode(SENDER_KEY_MAGIC + data[5 + n :]))
        return (None, *cls.decode(data))

    @classmethod
    def decode(cls, data: bytes) -> tuple[str, SenderKey]:
        if not data.startswith(SENDER_KEY_MAGIC) or len(data) < 6:
            raise FormatError("not a sender key")
        n = data[4]
        if len(data) != 5 + n + 4 + 4 + 32:
            raise FormatError("sender key has the wrong length")
        room = data[5 : 5 + n].decode("ascii", "replace")
        rest = data[5 + n :]
        (iteration,) = struct.unpack(">I", rest[4:8])
        return room, cls(rest[:4], rest[8:], iteration)

    def next_message_key(self) -> tuple[int, bytes]:
        mk, self.chain_key = _chain_step(self.chain_key)
        n, self.iteration = self.iteration, self.iteration + 1
        return n, mk

    def message_key_for(self, n: int) -> bytes:
        if n in self.skipped:
            return self.skipped.pop(n)
        if n < self.iteration:
            raise DecryptError("room message key already used or too old (replay?)")
        if n - self.iteration > MAX_SKIP:
            raise DecryptError("room message is too far ahead of the sender key")
        while self.iteration < n:
            skipped_n, mk = self.next_message_key()
            self.skipped[skipped_n] = mk
        while len(self.skipped) > MAX_SKIP:
            self.skipped.pop(min(self.skipped))
        return self.next_message_key()[1]


def read_sender_key(body: bytes, sender: str) -> tuple[str, SenderKey]:
    """The (room, key) of a ROOM_KEY body from `sender` (the account whose list names the sending device);
    an SCK2 body written by another account is refused (docs/PROTOCOL.md 6.6)."""
    writer, room, key = SenderKey.decode_with_writer(body)
    if writer is not None and writer != sender:
        raise FormatError(f"the room key was written by {writer}'s device, but the server lists that device as "
                          f"{sender}'s: the server may be misattributing messages")
    return room, key


@dataclass(frozen=True)
class RoomPlaintext:
    msg_id: bytes
    timestamp_ms: int
    body: bytes
    digest: bytes
    sender: PublicIdentity


def encrypt(room: str, body: bytes, me: PrivateIdentity, key: SenderKey, *, msg_id: bytes | None = None,
            timestamp_ms: int | None = None) -> bytes:
    from securecomm.crypto.envelope import new_msg_id, now_ms

    n, mk = key.next_message_key()
    plaintext = sha256(body) + body
    header = _HEADER.pack(VERSION, msg_id or new_msg_id(), timestamp_ms or now_ms(), key.key_id, n,
                          me.public.fingerprint, len(plaintext) + TAG_SIZE)
    aead, nonce = _aead(mk)
    prefix = _room_prefix(room)
    signed = header + aead.encrypt(nonce, plaintext, prefix + header)
    return signed + me.sign(prefix + signed)


@dataclass(frozen=True)
class RoomHeader:
    msg_id: bytes
    timestamp_ms: int
    key_id: bytes
    iteration: int
    sender: bytes


def peek_msg_id(payload: bytes) -> bytes | None:
    """Bytes 1..16 of a room payload, even one that does not parse (for error answers)."""
    return bytes(payload[1:17]) if len(payload) >= 17 else None


def parse_header(payload: bytes) -> RoomHeader:
    if len(payload) < _HEADER.size + TAG_SIZE + DIGEST_SIZE + SIGNATURE_SIZE:
        raise TruncatedError("room message is truncated")
    version, msg_id, ts, key_id, n, sender, ct_len = _HEADER.unpack_from(payload)
    if version != VERSION:
        raise VersionError(f"unsupported room message version {version}")
    if len(payload) != _HEADER.size + ct_len + SIGNATURE_SIZE:
        raise FormatError("room message has the wrong length")
    return RoomHeader(msg_id, ts, key_id, n, sender)


def decrypt(room: str, payload: bytes, sender: PublicIdentity, key: SenderKey) -> RoomPlaintext:
    h = parse_header(payload)
    if not same(h.sender, sender.fingerprint):
        raise UnknownSenderError("room message is not from the expected sender")
    prefix = _room_prefix(room)
    verify_signature(sender.verify_key, payload[-SIGNATURE_SIZE:], prefix + payload[:-SIGNATURE_SIZE], "room message")
    if not same(h.key_id, key.key_id):
        raise DecryptError("room message uses a sender key we do not have")
    aead, nonce = _aead(key.message_key_for(h.iteration))
    try:
        plaintext = aead.decrypt(nonce, payload[_HEADER.size : -SIGNATURE_SIZE], prefix + payload[: _HEADER.size])
    except InvalidTag as e:
        raise DecryptError("room message does not decrypt") from e
    digest, body = plaintext[:DIGEST_SIZE], plaintext[DIGEST_SIZE:]
    if not same(digest, sha256(body)):
        raise DigestError("room message digest does not match its body")
    return RoomPlaintext(h.msg_id, h.timestamp_ms, body, digest, sender)
