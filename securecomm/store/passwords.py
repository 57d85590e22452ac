"""Password hashing with Argon2id (RFC 9106) from `cryptography`, PHC-encoded.

Parameters are OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1. They
are stored in each hash, so raising them later only needs a new constant:
`needs_rehash()` spots old hashes at the next successful login.
"""

from __future__ import annotations

import itertools
import os
import re
import unicodedata
from functools import lru_cache
from importlib import resources

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from securecomm.errors import UsageError

MEMORY_KIB = 19 * 1024
ITERATIONS = 2
LANES = 1
SALT_SIZE = 16
HASH_SIZE = 32
#: NIST SP 800-63B 5.1.1.2: at least 8 characters, at least 64 allowed, no
#: composition rules; a blocklist of common, repetitive and sequential ones.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # Argon2 accepts more, but a megabyte "password" is an attack
#: Package data: common passwords (source and licence at the top of the file).
BLOCKLIST_FILE = "common-passwords.txt"
_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


def normalise(password: str) -> str:
    """NFKC then case-fold: the form in which passwords are compared with the blocklist."""
    return unicodedata.normalize("NFKC", password).casefold()


@lru_cache(maxsize=1)
def blocklist() -> frozenset[str]:
    text = resources.files("securecomm.store").joinpath(BLOCKLIST_FILE).read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def _is_run(text: str) -> bool:
    """One character repeated, or a straight run like 'abcdefgh' / '87654321'."""
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(text)}
    return len(steps) == 1 and steps <= {-1, 0, 1}


def check_policy(password: str, user: str | None = None) -> None:
    """Refuse, with a reason, a password NIST SP 800-63B says to refuse."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsageError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    norm = normalise(password)
    if _is_run(norm):
        raise UsageError("password is a repeated or sequential run of characters; choose another",
                         hint="a few unrelated words make a good password")
    if norm in blocklist() or (user is not None and norm == normalise(user)):
        raise UsageError("password is too common (it is on the list of common passwords or is the user name); "
                         "choose another", hint="a few unrelated words make a good password")


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(salt=salt, length=HASH_SIZE, iterations=ITERATIONS, lanes=LANES, memory_cost=MEMORY_KIB)


def hash_password(password: str) -> str:
    return _kdf(os.urandom(SALT_SIZE)).derive_phc_encoded(password.encode())


def verify_password(password: str, phc: str) -> bool:
    """Constant-time check inside the library; False for a wrong password or a broken hash.

    An over-long password is still hashed (its first MAX_PASSWORD_LENGTH
    characters) and then refused, so that its answer takes as long as any other."""
    if len(password) > MAX_PASSWORD_LENGTH:
        _verify(password[:MAX_PASSWORD_LENGTH], phc)
        return False
    return _verify(password, phc)


def _verify(password: str, phc: str) -> bool:
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
