"""Identity keys: a key-encapsulation key for HPKE plus an Ed25519 signing key.

Public identity, binary form (used in fingerprints, the key directory and the
server hello):

    kem_id  u8        1 = mlkem768-x25519, 2 = x25519, 3 = p256
    kem_len u16 (BE)  length of kem_public
    kem_public        ML-KEM-768 (1184) || X25519 (32) | X25519 (32) | P-256 uncompressed (65)
    sign_public       Ed25519, 32 bytes

Text form, one pasteable token:
    securecomm:1:<kem name>:<base64url(kem_public)>:<base64url(sign_public)>

Fingerprint: SHA-256("securecomm/v1/identity" || binary form), shown as
`SHA256:<base64, no padding>` like OpenSSH.

Private key file: PEM PKCS#8 blocks, Ed25519 first, then the KEM key(s)
(ML-KEM-768 then X25519 for the hybrid), each optionally encrypted with the
library's best available PKCS#8 encryption.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519

from securecomm.crypto.integrity import format_fingerprint, sha256
from securecomm.crypto.signing import verify_signature
from securecomm.errors import AuthError, FormatError

IDENTITY_LABEL = b"securecomm/v1/identity"
LINE_PREFIX = "securecomm:1:"

#: name -> (wire id, public length, HPKE KEM)
KEMS: dict[str, tuple[int, int, Any]] = {
    "mlkem768-x25519": (1, 1184 + 32, hpke.KEM.MLKEM768_X25519),
    "x25519": (2, 32, hpke.KEM.X25519),
    "p256": (3, 65, hpke.KEM.P256),
}
KEM_BY_ID = {v[0]: k for k, v in KEMS.items()}
DEFAULT_KEM = "mlkem768-x25519"
SIGN_PUBLIC_SIZE = 32
SIGNATURE_SIZE = 64


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    if not _B64U.fullmatch(text) or len(text) % 4 == 1:
        raise FormatError("invalid base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u(data) != text:  # reject non-canonical encodings
        raise FormatError("invalid base64url")
    return data


_B64U = re.compile(r"[A-Za-z0-9_-]+")


def _load_kem_public(kem: str, raw: bytes) -> Any:
    try:
        if kem == "mlkem768-x25519":
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]),
                x25519.X25519PublicKey.from_public_bytes(raw[1184:]),
            )
        if kem == "x25519":
            return x25519.X25519PublicKey.from_public_bytes(raw)
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as e:
        raise FormatError(f"invalid {kem} public key") from e


def load_kem_public(kem: str, raw: bytes) -> Any:
    """An HPKE public key of suite `kem` from its section-1 bytes (also prekeys', section 6.5)."""
    return _load_kem_public(kem, raw)


@dataclass(frozen=True)
class PublicIdentity:
    """Someone's public identity: whom to seal to, whose signatures to trust."""

    kem: str
    kem_public: bytes
    sign_public: bytes

    def __post_init__(self) -> None:
        if self.kem not in KEMS:
            raise FormatError(f"unknown key type {self.kem!r}")
        if len(self.kem_public) != KEMS[self.kem][1] or len(self.sign_public) != SIGN_PUBLIC_SIZE:
            raise FormatError("identity has the wrong key length")
        self.hpke_key  # noqa: B018 - validates the points now, not at first use
        self.verify_key  # noqa: B018

    # -- encodings ------------------------------------------------------------
    def encode(self) -> bytes:
        kem_id = KEMS[self.kem][0]
        return struct.pack(">BH", kem_id, len(self.kem_public)) + self.kem_public + self.sign_public

    @classmethod
    def decode_cached(cls, data: bytes) -> PublicIdentity:
        """decode() for identities read back from our own database, memoised:
        validating an ML-KEM key costs more than the login that needs it."""
        return _decode_cached(bytes(data))

    @classmethod
    def decode(cls, data: bytes) -> PublicIdentity:
        if len(data) < 3:
            raise FormatError("identity is truncated")
        kem_id, kem_len = struct.unpack_from(">BH", data)
        kem = KEM_BY_ID.get(kem_id)
        if kem is None:
            raise FormatError(f"unknown key type {kem_id}")
        if len(data) != 3 + kem_len + SIGN_PUBLIC_SIZE:
            raise FormatError("identity has the wrong length")
        return cls(kem, data[3 : 3 + kem_len], data[3 + kem_len :])

    @cached_property
    def line(self) -> str:
        return f"{LINE_PREFIX}{self.kem}:{b64u(self.kem_public)}:{b64u(self.sign_public)}"

    @classmethod
    def from_line_cached(cls, line: str) -> PublicIdentity:
        """from_line() memoised, for lines seen again and again (a server's hello)."""
        return _from_line_cached(line)

    @classmethod
    def from_line(cls, line: str) -> PublicIdentity:
        line = line.strip()
        if not line.startswith(LINE_PREFIX):
            raise FormatError("not a securecomm identity (expected 'securecomm:1:...')")
        parts = line[len(LINE_PREFIX) :].split(":")
        if len(parts) != 3:
            raise FormatError("malformed identity line")
        kem, kem_b64, sign_b64 = parts
        if kem not in KEMS:
            raise FormatError(f"unknown key type {kem!r}")
        return cls(kem, unb64u(kem_b64), unb64u(sign_b64))

    # -- derived values -------------------------------------------------------
    @cached_property
    def fingerprint(self) -> bytes:
        return sha256(IDENTITY_LABEL + self.encode())

    @property
    def fingerprint_text(self) -> str:
        return format_fingerprint(self.fingerprint)

    @cached_property
    def hpke_key(self) -> Any:
        return _load_kem_public(self.kem, self.kem_public)

    @cached_property
    def verify_key(self) -> ed25519.Ed25519PublicKey:
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(self.sign_public)
        except ValueError as e:
            raise FormatError("invalid Ed25519 public key") from e

    def verify(self, signature: bytes, data: bytes) -> None:
        verify_signature(self.verify_key, signature, data)

    def as_dict(self) -> dict[str, str]:
        return {
            "identity": self.line,
            "fingerprint": self.fingerprint_text,
            "kem": self.kem,
            "signature": "ed25519",
        }


@functools.lru_cache(maxsize=4096)
def _decode_cached(data: bytes) -> PublicIdentity:
    return PublicIdentity.decode(data)


@functools.lru_cache(maxsize=64)
def _from_line_cached(line: str) -> PublicIdentity:
    return PublicIdentity.from_line(line)


class PrivateIdentity:
    """A local identity: decrypts what is sealed to it and signs what it sends."""

    def __init__(self, kem: str, kem_parts: list[Any], sign_key: ed25519.Ed25519PrivateKey) -> None:
        self.kem = kem
        self.kem_parts = kem_parts
        self.sign_key = sign_key
        if kem == "mlkem768-x25519":
            self.hpke_key: Any = hpke.MLKEM768X25519PrivateKey(kem_parts[0], kem_parts[1])
        else:
            self.hpke_key = kem_parts[0]
        self.public = PublicIdentity(kem, self._kem_public(), _raw_public(sign_key.public_key()))

    @classmethod
    def generate(cls, kem: str = DEFAULT_KEM) -> PrivateIdentity:
        if kem == "mlkem768-x25519":
            parts: list[Any] = [mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()]
        elif kem == "x25519":
            parts = [x25519.X25519PrivateKey.generate()]
        elif kem == "p256":
            parts = [ec.generate_private_key(ec.SECP256R1())]
        else:
            raise FormatError(f"unknown key type {kem!r}")
        return cls(kem, parts, ed25519.Ed25519PrivateKey.generate())

    def _kem_public(self) -> bytes:
        return b"".join(_raw_public(k.public_key()) for k in self.kem_parts)

    def sign(self, data: bytes) -> bytes:
        return self.sign_key.sign(data)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        keys = [self.sign_key, *self.kem_parts]
        return b"".join(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
            for k in keys
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> PrivateIdentity:
        keys = [_load_block(block, passphrase) for block in _pem_blocks(data)]
        if not keys or not isinstance(keys[0], ed25519.Ed25519PrivateKey):
            raise FormatError("identity file does not start with an Ed25519 key")
        kem_parts = keys[1:]
        if (
            len(kem_parts) == 2
            and isinstance(kem_parts[0], mlkem.MLKEM768PrivateKey)
            and isinstance(kem_parts[1], x25519.X25519PrivateKey)
        ):
            kem = "mlkem768-x25519"
        elif len(kem_parts) == 1 and isinstance(kem_parts[0], x25519.X25519PrivateKey):
            kem = "x25519"
        elif (
            len(kem_parts) == 1
            and isinstance(kem_parts[0], ec.EllipticCurvePrivateKey)
            and isinstance(kem_parts[0].curve, ec.SECP256R1)
        ):
            kem = "p256"
        else:
            raise FormatError("identity file holds an unsupported combination of keys")
        return cls(kem, kem_parts, keys[0])


def kem_public_bytes(kem_parts: list[Any]) -> bytes:
    """The section-1 public bytes of KEM private parts (an identity's or a prekey's)."""
    return b"".join(_raw_public(k.public_key()) for k in kem_parts)


def _raw_public(key: Any) -> bytes:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return key.public_bytes_raw()


_BEGIN = b"-----BEGIN "
_END = b"-----END "


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, start = [], data.find(_BEGIN)
    while start != -1:
        end = data.find(_END, start)
        stop = data.find(b"-----", end + len(_END)) if end != -1 else -1
        if stop == -1:
            raise FormatError("identity file has a truncated PEM block")
        blocks.append(data[start : stop + 5])
        start = data.find(_BEGIN, stop + 5)
    return blocks


def is_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in data


def _load_block(block: bytes, passphrase: bytes | None) -> Any:
    encrypted = b"ENCRYPTED" in block
    try:
        return serialization.load_pem_private_key(block, passphrase if encrypted else None)
    except (ValueError, TypeError) as e:
        if encrypted:
            raise AuthError("wrong passphrase for the identity key") from e
        raise FormatError("identity file holds an unreadable key") from e


# -- files ---------------------------------------------------------------------
def save(identity: PrivateIdentity, key_path: Any, pub_path: Any, *,
         passphrase: bytes | None = None, force: bool = False) -> None:
    """Write the private key (0600) and the public line (0644), all or nothing."""
    from securecomm.files import PRIVATE_MODE, PUBLIC_MODE, write_files

    write_files(
        [
            (key_path, identity.to_pem(passphrase), PRIVATE_MODE),
            (pub_path, (identity.public.line + "\n").encode(), PUBLIC_MODE),
        ],
        force=force,
    )


def load(key_path: Any, passphrase: Any = None) -> PrivateIdentity:
    """Load a private identity; `passphrase` is bytes or a callable asked only if needed."""
    from securecomm.files import read_private

    data = read_private(key_path)
    secret = None
    if is_encrypted(data):
        secret = passphrase() if callable(passphrase) else passphrase
        if not secret:
            raise AuthError(f"{key_path} is encrypted and no passphrase was given")
    return PrivateIdentity.from_pem(data, secret)


def load_public(pub_path: Any) -> PublicIdentity:
    from securecomm.files import read_file

    return PublicIdentity.from_line(read_file(pub_path).decode("utf-8", "replace"))
