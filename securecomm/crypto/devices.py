"""User keys, device certificates, signed device lists and pairing codes.

Theory of operation (docs/PROTOCOL.md 6.1-6.4)
-----------------------------------------------
Each account has one Ed25519 *user key*; contacts pin it. Each device keeps
its own identity (HPKE + Ed25519, crypto/identity.py). The user key signs

    certificate = user, user key, device identity, name, added_ms
    device list = user, user key, counter, issued_ms, sorted device ids

A device is valid while its certificate verifies under the pinned user key
and its id is on the newest list seen. The counter only grows, so a server
replaying an old list (one that still names a removed device) is caught by
`DeviceList.verify(..., last_counter=...)`. Pairing codes are pure values
here: the server keeps only their digest and expiry (`PendingPairing`).

Checks run in the order the spec gives: layout, then "is it the pinned user
key", then the signature, then freshness, so each failure has one name.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from securecomm.crypto.identity import PublicIdentity, b64u, format_fingerprint, unb64u
from securecomm.crypto.integrity import same, sha256
from securecomm.crypto.reader import Reader
from securecomm.errors import (
    FormatError,
    NotUserKeyError,
    PairingExpiredError,
    PairingUnknownError,
    PairingUsedError,
    SignatureError,
    StaleDeviceListError,
    VersionError,
)

VERSION = 2
USER_KEY_LABEL = b"securecomm/v2/user-key"
CERT_LABEL = b"securecomm/v2/device-cert"
LIST_LABEL = b"securecomm/v2/device-list"
PAIRING_LABEL = b"securecomm/v2/pairing-code"
USER_KEY_LINE_PREFIX = "securecomm:user:"
TRANSFER_MAGIC = b"SCU2"
#: Devices per user: enough for a phone, laptops and a spare, and it bounds
#: the fan-out of one direct message (issue 12).
MAX_DEVICES = 10
#: A device name is a label the user reads, not an identifier: 64 bytes is a sentence.
MAX_NAME_BYTES = 64
DEVICE_ID_SIZE = 32
SIGNATURE_SIZE = 64
KEY_SIZE = 32
_NAME_RE = re.compile(r"[a-z0-9_.-]{1,32}")


def check_user(user: str) -> bytes:
    """The folded user name of section 5.1 as ASCII bytes, or FormatError."""
    if not _NAME_RE.fullmatch(user):
        raise FormatError("invalid user name in a device structure")
    return user.encode("ascii")


def check_device_name(name: str) -> bytes:
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON ("\ud800"): was an internal error, fatal
        raise FormatError("a device name is 1-64 bytes of UTF-8 without control characters") from None
    if not 1 <= len(raw) <= MAX_NAME_BYTES or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise FormatError("a device name is 1-64 bytes of UTF-8 without control characters")
    return raw


def short_id(device_id: bytes) -> str:
    """How a device id is shown: its first 6 bytes in hex (docs/PROTOCOL.md 6.1)."""
    return device_id[:6].hex()


# -- the user key ------------------------------------------------------------------
@dataclass(frozen=True)
class UserPublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise FormatError("a user key is 32 bytes")
        self.verify_key  # noqa: B018 - validates the point now

    @cached_property
    def verify_key(self) -> ed25519.Ed25519PublicKey:
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        except ValueError as e:
            raise FormatError("invalid Ed25519 user key") from e

    @property
    def line(self) -> str:
        return USER_KEY_LINE_PREFIX + b64u(self.raw)

    @classmethod
    def from_line(cls, line: str) -> UserPublicKey:
        line = line.strip()
        if not line.startswith(USER_KEY_LINE_PREFIX):
            raise FormatError("not a securecomm user key (expected 'securecomm:user:...')")
        return cls(unb64u(line[len(USER_KEY_LINE_PREFIX) :]))

    @cached_property
    def fingerprint(self) -> bytes:
        return sha256(USER_KEY_LABEL + self.raw)

    @property
    def fingerprint_text(self) -> str:
        return format_fingerprint(self.fingerprint)

    def verify(self, signature: bytes, data: bytes) -> None:
        try:
            self.verify_key.verify(signature, data)
        except InvalidSignature as e:
            raise SignatureError("signature by the user key does not verify") from e


class UserKey:
    """The private user key: signs certificates and device lists."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self.key = key
        self.public = UserPublicKey(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> UserKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> UserKey:
        if len(seed) != KEY_SIZE:
            raise FormatError("a user key seed is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.key.private_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def _check_signer(user: str, user_key: bytes, expect_user: str, pinned: UserPublicKey) -> None:
    if user != expect_user or not same(user_key, pinned.raw):
        raise NotUserKeyError(f"not signed by the user key of {expect_user}")


def _verify(pinned: UserPublicKey, label: bytes, signed: bytes, signature: bytes, what: str) -> None:
    try:
        pinned.verify_key.verify(signature, label + signed)
    except InvalidSignature as e:
        raise SignatureError(f"{what} signature does not verify") from e


def _read_head(r: Reader, what: str) -> tuple[str, bytes]:
    version = r.u8()
    if version != VERSION:
        raise VersionError(f"unsupported {what} version {version}")
    raw_user = r.take(r.u8())
    user = raw_user.decode("ascii", "replace")
    check_user(user)
    return user, r.take(KEY_SIZE)


def _head(user: str, user_key: bytes) -> bytes:
    raw = check_user(user)
    return bytes([VERSION, len(raw)]) + raw + user_key


# -- device certificate ----------------------------------------------------------------
@dataclass(frozen=True)
class DeviceCert:
    user: str
    user_key: bytes
    device: PublicIdentity
    name: str
    added_ms: int
    signature: bytes

    @property
    def device_id(self) -> bytes:
        return self.device.fingerprint

    @property
    def user_key_public(self) -> UserPublicKey:
        """The user key this certificate names (to compare with a pinned one, not to trust)."""
        return UserPublicKey(self.user_key)

    @staticmethod
    def _body(user: str, user_key: bytes, device: PublicIdentity, name: str, added_ms: int) -> bytes:
        ident, raw_name = device.encode(), check_device_name(name)
        return (_head(user, user_key) + struct.pack(">H", len(ident)) + ident + bytes([len(raw_name)])
                + raw_name + struct.pack(">Q", added_ms))

    @property
    def signed_part(self) -> bytes:
        return self._body(self.user, self.user_key, self.device, self.name, self.added_ms)

    @classmethod
    def sign(cls, key: UserKey, user: str, device: PublicIdentity, name: str, added_ms: int) -> DeviceCert:
        body = cls._body(user, key.public.raw, device, name, added_ms)
        return cls(user, key.public.raw, device, name, added_ms, key.sign(CERT_LABEL + body))

    def encode(self) -> bytes:
        return self.signed_part + self.signature

    @classmethod
    def decode(cls, data: bytes) -> DeviceCert:
        r = Reader(data, "device certificate")
        user, user_key = _read_head(r, "device certificate")
        device = PublicIdentity.decode(r.take(r.u16()))
        try:
            name = r.take(r.u8()).decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError("device name is not UTF-8") from e
        check_device_name(name)
        added_ms, signature = r.u64(), r.take(SIGNATURE_SIZE)
        r.done()
        return cls(user, user_key, device, name, added_ms, signature)

    def verify(self, user: str, pinned: UserPublicKey) -> None:
        """Raise unless this certificate is `user`'s, signed by the pinned user key."""
        _check_signer(self.user, self.user_key, user, pinned)
        _verify(pinned, CERT_LABEL, self.signed_part, self.signature, "device certificate")


# -- signed device list -------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceList:
    user: str
    user_key: bytes
    counter: int
    issued_ms: int
    devices: tuple[bytes, ...]
    signature: bytes

    @staticmethod
    def _body(user: str, user_key: bytes, counter: int, issued_ms: int, devices: tuple[bytes, ...]) -> bytes:
        _check_devices(devices)
        if counter < 1:
            raise FormatError("a device list counter starts at 1")
        return (_head(user, user_key) + struct.pack(">QQB", counter, issued_ms, len(devices))
                + b"".join(devices))

    @property
    def signed_part(self) -> bytes:
        return self._body(self.user, self.user_key, self.counter, self.issued_ms, self.devices)

    @classmethod
    def sign(cls, key: UserKey, user: str, counter: int, issued_ms: int, devices: list[bytes]) -> DeviceList:
        ids = tuple(sorted(devices))
        body = cls._body(user, key.public.raw, counter, issued_ms, ids)
        return cls(user, key.public.raw, counter, issued_ms, ids, key.sign(LIST_LABEL + body))

    def encode(self) -> bytes:
        return self.signed_part + self.signature

    @classmethod
    def decode(cls, data: bytes) -> DeviceList:
        r = Reader(data, "device list")
        user, user_key = _read_head(r, "device list")
        counter, issued_ms, count = r.u64(), r.u64(), r.u8()
        if not 1 <= count <= MAX_DEVICES:  # before reading: the count bounds the work
            raise FormatError(f"a device list names 1 to {MAX_DEVICES} devices")
        devices = tuple(r.take(DEVICE_ID_SIZE) for _ in range(count))
        signature = r.take(SIGNATURE_SIZE)
        r.done()
        if counter < 1:
            raise FormatError("a device list counter starts at 1")
        _check_devices(devices)
        return cls(user, user_key, counter, issued_ms, devices, signature)

    def verify(self, user: str, pinned: UserPublicKey, *, last: DeviceList | None = None) -> None:
        """Raise unless this list is `user`'s, signed by the pinned key, and not older than `last`."""
        _check_signer(self.user, self.user_key, user, pinned)
        _verify(pinned, LIST_LABEL, self.signed_part, self.signature, "device list")
        if last is not None and same(last.user_key, self.user_key):
            newer = self.counter > last.counter
            if not newer and not (self.counter == last.counter and same(self.encode(), last.encode())):
                raise StaleDeviceListError(
                    f"device list {self.counter} is not newer than list {last.counter} already seen")

    def has(self, device_id: bytes) -> bool:
        return any(same(device_id, d) for d in self.devices)


def _check_devices(devices: tuple[bytes, ...]) -> None:
    if not 1 <= len(devices) <= MAX_DEVICES:
        raise FormatError(f"a device list names 1 to {MAX_DEVICES} devices")
    if any(len(d) != DEVICE_ID_SIZE for d in devices):
        raise FormatError("a device id is 32 bytes")
    if any(a >= b for a, b in pairwise(devices)):
        raise FormatError("device ids must be sorted without repeats")


def valid_devices(user: str, pinned: UserPublicKey, dlist: DeviceList,
                  certs: list[DeviceCert]) -> list[DeviceCert]:
    """The certificates a sender may seal to: verified, and on the (verified) list.
    Raises if the list itself fails; a certificate of a device not on the list is dropped."""
    dlist.verify(user, pinned)
    out: list[DeviceCert] = []
    for cert in certs:
        cert.verify(user, pinned)
        if dlist.has(cert.device_id) and not any(same(cert.device_id, c.device_id) for c in out):
            out.append(cert)
    return out


# -- pairing codes (6.4) -----------------------------------------------------------------------
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
CODE_LENGTH = 10  # 50 bits: far beyond guessing within 10 minutes under the server's rate limit
#: How long a pairing code stays good: long enough to walk to the other device.
CODE_TTL_MS = 10 * 60 * 1000
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_pairing_code() -> str:
    """A fresh code, shown as XXXXX-XXXXX; 32 divides 256, so `byte % 32` is unbiased."""
    chars = "".join(CODE_ALPHABET[b % 32] for b in os.urandom(CODE_LENGTH))
    return chars[:5] + "-" + chars[5:]


def normalize_code(text: str) -> str:
    """The code as typed -> its 10 canonical characters, or PairingUnknownError."""
    code = re.sub(r"[\s-]", "", text).upper().translate(_READ_AS)
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        raise PairingUnknownError("a pairing code is 10 characters like ABCDE-12345")
    return code


def code_digest(user: str, code: str) -> bytes:
    """What the server stores instead of the code."""
    raw = check_user(user)
    return sha256(PAIRING_LABEL + bytes([len(raw)]) + raw + normalize_code(code).encode("ascii"))


@dataclass
class PendingPairing:
    """The server's record of one pairing code: its digest, expiry and whether it was used."""

    user: str
    digest: bytes
    expires_ms: int
    used: bool = False

    @classmethod
    def start(cls, user: str, code: str, now_ms: int) -> PendingPairing:
        return cls(user, code_digest(user, code), now_ms + CODE_TTL_MS)

    def check(self, user: str, code: str, now_ms: int) -> None:
        """Raise unless `code` is this pairing's, for `user`, unexpired and unused."""
        if user != self.user or not same(code_digest(user, code), self.digest):
            raise PairingUnknownError("no such pairing code for this account")
        if self.used:
            raise PairingUsedError("this pairing code was already used")
        if now_ms >= self.expires_ms:
            raise PairingExpiredError("this pairing code has expired: start again on the new device")

    def consume(self, user: str, code: str, now_ms: int) -> None:
        self.check(user, code, now_ms)
        self.used = True


# -- the user key handed to a new device (6.4) ----------------------------------------------
def encode_user_key_transfer(user: str, key: UserKey) -> bytes:
    raw = check_user(user)
    return TRANSFER_MAGIC + bytes([len(raw)]) + raw + key.seed


def decode_user_key_transfer(body: bytes, user: str, expect: UserPublicKey) -> UserKey:
    """The user key from a pairing hand-over; it must be `user`'s and match the certificates."""
    r = Reader(body, "user key hand-over")
    if r.take(len(TRANSFER_MAGIC)) != TRANSFER_MAGIC:
        raise FormatError("not a user key hand-over")
    named = r.take(r.u8()).decode("ascii", "replace")
    key = UserKey.from_seed(r.take(KEY_SIZE))
    r.done()
    if named != user or not same(key.public.raw, expect.raw):
        raise NotUserKeyError("the handed-over user key is not the one that signed this device")
    return key
