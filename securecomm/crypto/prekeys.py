"""One-time and last-resort prekeys, and envelope version 2 sealed to them.

Theory of operation (docs/PROTOCOL.md 6.5, 6.6)
------------------------------------------------
A device makes HPKE key pairs of its own suite (ML-KEM-768+X25519 by
default), numbers them from one counter, and signs each public half with its
Ed25519 device key:

    prekey = version | kind | prekey_id | kem_id | kem_len | kem_public | created_ms | sig
    sig    = Ed25519(device, PREKEY_LABEL || device id || prekey without sig)

A sender verifies the prekey under the recipient device's identity and seals
with envelope version 2: the v1 layout plus `key_kind u8 || prekey_id u32`
in the (105-byte) header, so the kind and id are bound by HPKE's `info` and
by the sender's signature. The reader checks layout, recipient, signature,
and only then looks the private prekey up; a one-time prekey that is gone
is a replay. After the decryption attempt the one-time key is handed to
`on_tried` for deletion: the caller deletes it with the stored outcome, so
nothing on the device opens that ciphertext again (forward secrecy). A
forgery (bad signature) never reaches the lookup, so it cannot burn keys.
Version-1 envelopes are refused by name, never opened with a long-term key.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from securecomm.crypto.envelope import (
    AEAD_CHACHA20_POLY1305,
    ENC_SIZES,
    KDF_HKDF_SHA256,
    KEM_BY_WIRE,
    KEM_IDS,
    MAGIC,
    MAX_ENVELOPE_SIZE,
    MSG_ID_SIZE,
    SenderLookup,
    _resolve,
    new_msg_id,
    now_ms,
)
from securecomm.crypto.identity import KEMS, PrivateIdentity, PublicIdentity, kem_public_bytes, load_kem_public
from securecomm.crypto.integrity import DIGEST_SIZE, same, sha256
from securecomm.crypto.reader import Reader
from securecomm.errors import (
    DecryptError,
    DigestError,
    FormatError,
    NoPrekeyError,
    NotAnEnvelopeError,
    OversizedError,
    PrekeySignatureError,
    ReplayedPrekeyError,
    SignatureError,
    TrailingDataError,
    TruncatedError,
    UnknownSenderError,
    UnknownSuiteError,
    VersionError,
    WrongRecipientError,
)

VERSION = 2
PREKEY_LABEL = b"securecomm/v2/prekey"
INFO_LABEL = b"securecomm/v2/envelope"
SIGN_LABEL = b"securecomm/v2/envelope-signature"
IDENTITY, ONE_TIME, LAST_RESORT = 0, 1, 2
KIND_NAMES = {IDENTITY: "device identity", ONE_TIME: "one-time prekey", LAST_RESORT: "last-resort prekey"}
#: One upload: 100 hybrid prekeys are 129,800 bytes, 259,600 hex digits, well inside a 1 MiB frame.
MAX_BATCH = 100
#: What the server holds per device: two batches, so a refill never has to wait for the last one to drain.
MAX_HELD = 200
#: Below this many one-time prekeys left, the client uploads a new batch.
REFILL_BELOW = 20
DAY_MS = 24 * 3600 * 1000
#: The last-resort prekey is replaced this often (it has no forward secrecy while it lives).
LAST_RESORT_ROTATE_MS = 7 * DAY_MS
#: ... and its private half kept this long after replacement, for mail sealed to it still waiting.
LAST_RESORT_GRACE_MS = 14 * DAY_MS
#: A one-time private key the server no longer lists is dropped after this long (handed out, never used):
#: counted from when the device first saw it gone, the default mailbox lifetime, so mail sealed to it has waited
#: as long as a server keeps mail by default.
UNUSED_ONE_TIME_MS = 30 * DAY_MS
#: ... and at most this many such keys are kept meanwhile, the lowest ids erased first: a server that keeps
#: saying it holds none (a restore, or a hostile one) must not make a device keep every key it ever made.
HANDED_OUT_KEPT = 5 * MAX_HELD
SIGNATURE_SIZE = 64
TAG_SIZE = 16

_SUITES = {name: hpke.Suite(KEMS[name][2], hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305) for name in KEMS}
_PREKEY_HEAD = struct.Struct(">BBIHH")
#   magic 4 | version u8 | kem u16 | kdf u16 | aead u16 | flags u8 | msg_id 16 | timestamp_ms u64 |
#   sender device id 32 | recipient device id 32 | key_kind u8 | prekey_id u32        = 105 bytes
_HEADER = struct.Struct(">4sBHHHB16sQ32s32sBI")
HEADER_SIZE = _HEADER.size
_LENGTHS = struct.Struct(">HI")
_OVERHEAD_MAX = HEADER_SIZE + _LENGTHS.size + max(ENC_SIZES.values()) + TAG_SIZE + DIGEST_SIZE + SIGNATURE_SIZE
MAX_BODY_SIZE = MAX_ENVELOPE_SIZE - _OVERHEAD_MAX
V1_REFUSED = "version 1 envelope refused: it was sealed to a long-term key without forward secrecy"


# -- prekeys ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Prekey:
    """A signed public prekey, as uploaded, stored by the server and claimed by senders."""

    kind: int
    prekey_id: int
    kem: str
    kem_public: bytes
    created_ms: int
    signature: bytes

    @property
    def signed_part(self) -> bytes:
        return _PREKEY_HEAD.pack(VERSION, self.kind, self.prekey_id, KEM_IDS[self.kem],
                                 len(self.kem_public)) + self.kem_public + struct.pack(">Q", self.created_ms)

    def encode(self) -> bytes:
        return self.signed_part + self.signature

    @classmethod
    def decode(cls, data: bytes) -> Prekey:
        r = Reader(data, "prekey")
        version, kind, prekey_id, kem_id, kem_len = _PREKEY_HEAD.unpack(r.take(_PREKEY_HEAD.size))
        if version != VERSION:
            raise VersionError(f"unsupported prekey version {version}")
        kem = KEM_BY_WIRE.get(kem_id)
        if kind not in (ONE_TIME, LAST_RESORT) or prekey_id == 0 or kem is None or kem_len != KEMS[kem][1]:
            raise FormatError("prekey has a bad kind, id, suite or key length")
        kem_public, created_ms, signature = r.take(kem_len), r.u64(), r.take(SIGNATURE_SIZE)
        r.done()
        return cls(kind, prekey_id, kem, kem_public, created_ms, signature)

    @cached_property
    def hpke_key(self) -> Any:
        return load_kem_public(self.kem, self.kem_public)

    def verify(self, device: PublicIdentity) -> None:
        """Raise unless `device` signed this prekey, for its own suite. A success is remembered on
        this (immutable) object for that device's fingerprint: a claim checked when it arrived (a
        claim made ahead, docs/PROTOCOL.md 6.13) is not checked again when it is sealed to."""
        if self.kem != device.kem:
            raise FormatError("prekey is not of its device's suite")
        if self.__dict__.get("_verified_for") == device.fingerprint:
            return
        try:
            device.verify_key.verify(self.signature, PREKEY_LABEL + device.fingerprint + self.signed_part)
        except InvalidSignature as e:
            raise PrekeySignatureError(f"prekey {self.prekey_id} has a bad signature") from e
        self.hpke_key  # noqa: B018 - a key that does not load is refused now, not at sealing
        self.__dict__["_verified_for"] = device.fingerprint


class PrivatePrekey:
    """A prekey's private half, kept by its device until used (one-time) or retired (last resort)."""

    def __init__(self, kind: int, prekey_id: int, kem: str, parts: list[Any], created_ms: int) -> None:
        if kind not in (ONE_TIME, LAST_RESORT) or not 1 <= prekey_id < 2**32:
            raise FormatError("bad prekey kind or id")
        self.kind, self.prekey_id, self.kem, self.parts, self.created_ms = kind, prekey_id, kem, parts, created_ms
        self.hpke_key: Any = hpke.MLKEM768X25519PrivateKey(parts[0], parts[1]) if kem == "mlkem768-x25519" \
            else parts[0]

    @classmethod
    def generate(cls, kind: int, prekey_id: int, kem: str, created_ms: int | None = None) -> PrivatePrekey:
        return cls(kind, prekey_id, kem, PrivateIdentity.generate(kem).kem_parts,
                   now_ms() if created_ms is None else created_ms)

    @classmethod
    def from_raw(cls, kind: int, prekey_id: int, kem: str, raw: bytes, created_ms: int) -> PrivatePrekey:
        """Inverse of `raw`: hybrid = ML-KEM-768 seed (64) || X25519 (32); x25519 (32); p256 scalar (32)."""
        try:
            if kem == "mlkem768-x25519" and len(raw) == 96:
                parts: list[Any] = [mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64]),
                                    x25519.X25519PrivateKey.from_private_bytes(raw[64:])]
            elif kem == "x25519" and len(raw) == 32:
                parts = [x25519.X25519PrivateKey.from_private_bytes(raw)]
            elif kem == "p256" and len(raw) == 32:
                parts = [ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())]
            else:
                raise FormatError("private prekey has the wrong length for its suite")
        except ValueError as e:
            raise FormatError("private prekey does not load") from e
        return cls(kind, prekey_id, kem, parts, created_ms)

    @property
    def raw(self) -> bytes:
        if self.kem == "p256":
            return int(self.parts[0].private_numbers().private_value).to_bytes(32, "big")
        return b"".join(p.private_bytes_raw() for p in self.parts)

    @property
    def public_bytes(self) -> bytes:
        return kem_public_bytes(self.parts)

    def sign(self, device: PrivateIdentity) -> Prekey:
        if device.kem != self.kem:
            raise FormatError("a prekey is of its device's suite")
        unsigned = Prekey(self.kind, self.prekey_id, self.kem, self.public_bytes, self.created_ms, b"")
        signature = device.sign(PREKEY_LABEL + device.public.fingerprint + unsigned.signed_part)
        return Prekey(self.kind, self.prekey_id, self.kem, unsigned.kem_public, self.created_ms, signature)


def generate_batch(device: PrivateIdentity, first_id: int, count: int, *, kind: int = ONE_TIME,
                   created_ms: int | None = None) -> list[PrivatePrekey]:
    """`count` new prekeys numbered from `first_id` (the device's counter)."""
    if not 1 <= count <= MAX_BATCH:
        raise FormatError(f"a batch holds 1 to {MAX_BATCH} prekeys")
    when = now_ms() if created_ms is None else created_ms
    return [PrivatePrekey.generate(kind, first_id + i, device.kem, when) for i in range(count)]


def verify_batch(device: PublicIdentity, batch: Iterable[bytes], *, kind: int, seen: Callable[[int], bool],
                 limit: int = MAX_BATCH) -> list[Prekey]:
    """Parse and check a whole upload; any failure refuses all of it (nothing is stored).

    `seen(prekey_id)` says whether this device already used that id (the server's record);
    a repeated or reused id is a replay. Every cheap check (layout, kind, ids) runs on the whole
    batch before the first signature, so a replayed batch costs no signature work."""
    items = list(batch)
    if len(items) > limit:
        raise FormatError(f"a batch holds at most {limit} prekeys")
    out: list[Prekey] = []
    ids: set[int] = set()
    for raw in items:
        pk = Prekey.decode(raw)
        if pk.kind != kind:
            raise FormatError(f"expected a {KIND_NAMES[kind]}, got a {KIND_NAMES[pk.kind]}")
        if pk.prekey_id in ids or seen(pk.prekey_id):
            raise ReplayedPrekeyError(f"prekey id {pk.prekey_id} was already used by this device (replay)")
        ids.add(pk.prekey_id)
        out.append(pk)
    for pk in out:
        pk.verify(device)
    return out


# -- envelope version 2 ---------------------------------------------------------------------
@dataclass(frozen=True)
class Header2:
    kem: str
    msg_id: bytes
    timestamp_ms: int
    sender: bytes
    recipient: bytes
    key_kind: int
    prekey_id: int

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, KEM_IDS[self.kem], KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305, 0,
                            self.msg_id, self.timestamp_ms, self.sender, self.recipient, self.key_kind,
                            self.prekey_id)


@dataclass(frozen=True)
class Envelope2:
    header: Header2
    enc: bytes
    ciphertext: bytes
    signature: bytes
    raw: bytes

    def verify(self, sender: PublicIdentity) -> None:
        if not same(sender.fingerprint, self.header.sender):
            raise UnknownSenderError("envelope is not from the expected sender")
        try:
            sender.verify_key.verify(self.signature, SIGN_LABEL + self.raw[:-SIGNATURE_SIZE])
        except InvalidSignature as e:
            raise SignatureError("envelope signature does not verify") from e


@dataclass(frozen=True)
class Opened2:
    header: Header2
    sender: PublicIdentity
    body: bytes
    digest: bytes

    @property
    def without_one_time_key(self) -> bool:
        """Shown to the reader as "sealed without a one-time key"."""
        return self.header.key_kind != ONE_TIME


def _check_version(data: bytes) -> None:
    if data[: len(MAGIC)] != MAGIC and not MAGIC.startswith(data):
        raise NotAnEnvelopeError("input is not a securecomm envelope")
    if len(data) > len(MAGIC) and data[len(MAGIC)] == 1:
        raise VersionError(V1_REFUSED)


def parse_v2(data: bytes) -> Envelope2:
    """Split a version-2 envelope, checking every length and constant (6.6)."""
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_SIZE:
        raise OversizedError(f"envelope is larger than {MAX_ENVELOPE_SIZE} bytes")
    _check_version(data)
    if len(data) < HEADER_SIZE + _LENGTHS.size:
        raise TruncatedError("envelope is truncated")
    (_magic, version, kem_id, kdf_id, aead_id, flags, msg_id, ts, sender, recipient, kind,
     prekey_id) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise VersionError(f"unsupported envelope version {version}")
    kem = KEM_BY_WIRE.get(kem_id)
    if kem is None or kdf_id != KDF_HKDF_SHA256 or aead_id != AEAD_CHACHA20_POLY1305:
        raise UnknownSuiteError(f"unknown suite kem=0x{kem_id:04x} kdf=0x{kdf_id:04x} aead=0x{aead_id:04x}")
    if flags != 0 or kind > LAST_RESORT or (kind == IDENTITY) != (prekey_id == 0):
        raise FormatError("reserved flags, or a bad key kind or prekey id")
    enc_len, ct_len = _LENGTHS.unpack_from(data, HEADER_SIZE)
    if enc_len != ENC_SIZES[kem] or ct_len < TAG_SIZE + DIGEST_SIZE:
        raise FormatError("encapsulated key or ciphertext has the wrong length")
    start = HEADER_SIZE + _LENGTHS.size
    end = start + enc_len + ct_len + SIGNATURE_SIZE
    if len(data) != end:
        raise (TruncatedError("envelope is truncated") if len(data) < end
               else TrailingDataError("envelope has trailing bytes"))
    header = Header2(kem, msg_id, ts, sender, recipient, kind, prekey_id)
    return Envelope2(header, data[start : start + enc_len], data[start + enc_len : end - SIGNATURE_SIZE],
                     data[end - SIGNATURE_SIZE :], data)


def seal_v2(body: bytes, sender: PrivateIdentity, device: PublicIdentity, prekey: Prekey | None, *,
            msg_id: bytes | None = None, timestamp_ms: int | None = None) -> bytes:
    """Seal `body` to `device`'s `prekey` (verified here), or to its identity when `prekey` is None
    (offline files and the pairing hand-over only)."""
    if len(body) > MAX_BODY_SIZE:
        raise OversizedError(f"message is larger than {MAX_BODY_SIZE} bytes")
    msg_id = new_msg_id() if msg_id is None else msg_id
    if len(msg_id) != MSG_ID_SIZE:
        raise FormatError("message id must be 16 bytes")
    if prekey is not None:
        prekey.verify(device)
    kind, pid, pk = (IDENTITY, 0, device.hpke_key) if prekey is None else \
        (prekey.kind, prekey.prekey_id, prekey.hpke_key)
    header = Header2(device.kem, msg_id, now_ms() if timestamp_ms is None else timestamp_ms,
                     sender.public.fingerprint, device.fingerprint, kind, pid).pack()
    sealed = _SUITES[device.kem].encrypt(sha256(body) + body, pk, info=INFO_LABEL + header)
    enc_len = ENC_SIZES[device.kem]
    signed = header + _LENGTHS.pack(enc_len, len(sealed) - enc_len) + sealed
    return signed + sender.sign(SIGN_LABEL + signed)


PrekeyLookup = Callable[[int, int], PrivatePrekey | None]


def open_v2(data: bytes | Envelope2, me: PrivateIdentity, senders: SenderLookup, prekeys: PrekeyLookup, *,
            on_tried: Callable[[PrivatePrekey], None] | None = None, require_prekey: bool = True) -> Opened2:
    """Parse, check recipient and signature, find the prekey, decrypt, check the digest.

    `prekeys(kind, id)` returns the private prekey or None (used, or never made);
    `on_tried(prekey)` is called once a one-time prekey was tried, whatever the outcome,
    so the caller deletes it together with what it records (docs/PROTOCOL.md 6.5)."""
    env = data if isinstance(data, Envelope2) else parse_v2(data)
    h = env.header
    if not same(h.recipient, me.public.fingerprint) or h.kem != me.kem:
        raise WrongRecipientError("envelope is addressed to another device")
    if require_prekey and h.key_kind == IDENTITY:
        raise NoPrekeyError("message is sealed to a long-term key, not to a prekey: refused")
    sender = _resolve(senders, h.sender)
    env.verify(sender)
    found = None if h.key_kind == IDENTITY else _find(prekeys, h)
    key = me.hpke_key if found is None else found.hpke_key
    try:
        plaintext = _SUITES[h.kem].decrypt(env.enc + env.ciphertext, key, info=INFO_LABEL + env.raw[:HEADER_SIZE])
    except (InvalidTag, ValueError) as e:
        raise DecryptError("envelope does not decrypt") from e
    finally:
        if found is not None and found.kind == ONE_TIME and on_tried is not None:
            on_tried(found)
    digest, body = plaintext[:DIGEST_SIZE], plaintext[DIGEST_SIZE:]
    if not same(digest, sha256(body)):
        raise DigestError("message digest does not match its body")
    return Opened2(h, sender, body, digest)


def _find(prekeys: PrekeyLookup, h: Header2) -> PrivatePrekey:
    found = prekeys(h.key_kind, h.prekey_id)
    if found is None or found.kem != h.kem or found.kind != h.key_kind:
        raise ReplayedPrekeyError(f"{KIND_NAMES[h.key_kind]} {h.prekey_id} was already used or never made (a "
                                  "replay, or the server was restored from an older backup and handed it out again)")
    return found


class MemoryPrekeys:
    """A device's private prekeys in memory, with the deletion rule of 6.5; the client keeps
    the same in its store. Useful as the reference behaviour in tests and benchmarks."""

    def __init__(self, keys: Iterable[PrivatePrekey] = ()) -> None:
        self.keys: dict[tuple[int, int], PrivatePrekey] = {(k.kind, k.prekey_id): k for k in keys}

    def add(self, key: PrivatePrekey) -> None:
        self.keys[(key.kind, key.prekey_id)] = key

    def get(self, kind: int, prekey_id: int) -> PrivatePrekey | None:
        return self.keys.get((kind, prekey_id))

    def delete(self, key: PrivatePrekey) -> None:
        self.keys.pop((key.kind, key.prekey_id), None)

    def open(self, data: bytes, me: PrivateIdentity, senders: SenderLookup) -> Opened2:
        return open_v2(data, me, senders, self.get, on_tried=self.delete)


def expired_last_resort(replaced_ms: int, now: int | None = None) -> bool:
    """Whether a replaced last-resort private key is past its grace period (6.5)."""
    return (now if now is not None else time.time_ns() // 1_000_000) - replaced_ms >= LAST_RESORT_GRACE_MS
