"""The key directory as the client sees it: lookups, and contacts pinned on first use (TOFU).

`look_up` asks the server's directory for a user's key and checks it against the contact
pinned for that name; the server's word alone never decides whose key a name has.

A JSON file under the config dir maps a user name to the identity line
first seen for it. A different key for a known name is refused until the
user accepts it explicitly (`securecomm contacts trust NAME`), as Signal's
safety numbers and OpenSSH's known_hosts work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securecomm.client import answers
from securecomm.crypto.identity import PublicIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import ChangedKeyError, FormatError
from securecomm.files import PRIVATE_MODE, write_files


@dataclass(frozen=True)
class Contact:
    name: str
    identity: PublicIdentity
    first_seen: float
    pending: PublicIdentity | None = None  # a changed key waiting for `contacts trust`


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """Which version of the file is on disk: every save renames a new file into place."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Contacts:
    def __init__(self, path: Path, entries: dict[str, Contact]) -> None:
        self.path = path
        self.entries = entries
        self.stamp = file_stamp(path)  # the version `entries` came from (or was saved as)

    def refresh(self) -> bool:
        """Reload if another process (`contacts trust`, another session) saved since: a long-running
        chat then sees a trust at once, and never writes back the stale copy it held. True if reloaded."""
        if file_stamp(self.path) == self.stamp:
            return False
        fresh = Contacts.load(self.path)
        self.entries, self.stamp = fresh.entries, fresh.stamp
        return True

    @classmethod
    def load(cls, path: Path) -> Contacts:
        if not path.exists():
            return cls(path, {})
        try:
            raw = json.loads(path.read_text())
            entries = {
                name: Contact(
                    name,
                    PublicIdentity.from_line(e["identity"]),
                    float(e["first_seen"]),
                    PublicIdentity.from_line(e["pending"]) if e.get("pending") else None,
                )
                for name, e in raw.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{path} is not a valid contacts file") from e
        return cls(path, entries)

    def save(self) -> None:
        data = {
            c.name: {"identity": c.identity.line, "fingerprint": c.identity.fingerprint_text,
                     "first_seen": c.first_seen, **({"pending": c.pending.line} if c.pending else {})}
            for c in self.entries.values()
        }
        write_files([(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), PRIVATE_MODE)],
                    force=True)
        self.stamp = file_stamp(self.path)

    def all(self) -> list[Contact]:
        return list(self.entries.values())

    def get(self, name: str) -> Contact | None:
        self.refresh()
        return self.entries.get(name)

    def check(self, name: str, identity: PublicIdentity) -> bool:
        """Remember on first use; True if new. Raises ChangedKeyError on a changed key."""
        answers.check_user_name(name)
        self.refresh()
        known = self.entries.get(name)
        if known is None:
            self.entries[name] = Contact(name, identity, time.time())
            self.save()
            return True
        if same(known.identity.fingerprint, identity.fingerprint):
            if known.pending is not None:  # the change was undone (e.g. they logged in again from the first device)
                self.entries[name] = Contact(name, known.identity, known.first_seen)
                self.save()
            return False
        if known.pending is None or not same(known.pending.fingerprint, identity.fingerprint):
            self.entries[name] = Contact(name, known.identity, known.first_seen, identity)
            self.save()
        raise ChangedKeyError(
            f"the key of {name} has CHANGED from {known.identity.fingerprint_text} to {identity.fingerprint_text}; "
            "this may be an attack, or they replaced their key",
            hint=f"verify the new fingerprint with {name} out of band, then run: securecomm contacts trust {name}",
        )

    def trust(self, name: str) -> Contact:
        from securecomm.errors import NotFoundError, UsageError

        self.refresh()
        known = self.entries.get(name)
        if known is None:
            raise NotFoundError(f"no contact named {name!r}")
        if known.pending is None:
            raise UsageError(f"{name}'s key has not changed; nothing to trust")
        self.entries[name] = Contact(name, known.pending, time.time())
        self.save()
        return self.entries[name]


async def look_up(request: Callable[..., Awaitable[Any]], contacts: Contacts, user: str) -> PublicIdentity:
    """`user`'s key from the server's key directory (`request` is Client.request), pinned on first
    use in `contacts`; a changed key raises ChangedKeyError. `user` is already lower-case."""
    what = "the lookup result"
    data = answers.obj(await request("lookup", user=user), what)
    name, line = answers.text(data, "user", what), answers.text(data, "identity", what)
    answers.check_user_name(name)
    if name != user:  # the key must be pinned under the name it is used for
        raise answers.malformed(f"asked for {user!a}, the lookup answered for {name!a}")
    identity = PublicIdentity.from_line(line)
    contacts.check(name, identity)
    return identity
