"""Password hashing with Argon2id (RFC 9106) from `cryptography`, PHC-encoded.

Parameters are OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1. They
are stored in each hash, so raising them later only needs a new constant:
`needs_rehash()` spots old hashes at the next successful login.
"""

from __future__ import annotations

import os
import re

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from securecomm.errors import UsageError

MEMORY_KIB = 19 * 1024
ITERATIONS = 2
LANES = 1
SALT_SIZE = 16
HASH_SIZE = 32
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # Argon2 accepts more, but a megabyte "password" is an attack
_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


def check_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsageError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(salt=salt, length=HASH_SIZE, iterations=ITERATIONS, lanes=LANES, memory_cost=MEMORY_KIB)


def hash_password(password: str) -> str:
    return _kdf(os.urandom(SALT_SIZE)).derive_phc_encoded(password.encode())


def verify_password(password: str, phc: str) -> bool:
    """Constant-time check inside the library; False for a wrong password or a broken hash."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        Argon2id.verify_phc_encoded(password.encode(), phc)
    except (InvalidKey, ValueError):
        return False
    return True


def needs_rehash(phc: str) -> bool:
    m = _PARAMS.match(phc)
    if not m:
        return True
    mem, t, p = (int(x) for x in m.groups())
    return mem < MEMORY_KIB or t < ITERATIONS or p < LANES


#: A hash of a random password, verified against when the user does not exist,
#: so that "no such user" costs the same time as "wrong password".
def dummy_hash() -> str:
    return hash_password(os.urandom(16).hex())
