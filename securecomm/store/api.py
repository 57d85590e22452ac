"""The operations the relay needs from durable state, and nothing more: the seam for a second store.

securecomm.store.db.Store (SQLite) implements it; a PostgreSQL store for several relays
implements the same methods. The server wing types its store with `ServerStore` only, so it
never reaches past this list (before, `Relay.store: Any` hid that DIRECT batches were typed as
SEND ones). Reads are synchronous on purpose: they run on a read-only connection on the event
loop, so no live delivery can slip between a query and its offers (server/relay.py offer_pending).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the row types only; importing this module loads no database driver
    from securecomm.store.db import MailItem, NewDirect, NewMessage, StoredMessage, Taken, User
    from securecomm.store.retention import Expired


class ServerStore(Protocol):
    # -- accounts: read on the event loop ------------------------------------------------
    def get_user(self, name: str) -> User | None: ...
    def get_user_by_id(self, user_id: int) -> User | None: ...
    def list_users(self) -> list[User]: ...
    def account_changes(self) -> int:
        """A counter every account change (made by any process) increases."""
        ...

    # -- accounts: written on the store's own thread ------------------------------------
    def upgrade_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool: ...
    def set_lock(self, user_id: int, failures: int, locked_until: int) -> None: ...
    def record_login(self, user_id: int, success: bool, *, clear_lock: bool = True) -> None: ...
    def set_identity(self, user_id: int, identity: bytes, fingerprint: bytes) -> None: ...

    # -- messages ------------------------------------------------------------------------
    def store_messages(self, items: Iterable[NewMessage | NewDirect]) -> list[StoredMessage]:
        """One durable transaction for the whole batch (group commit)."""
        ...

    def prune_direct_ids(self, older_than_ms: int, limit: int) -> int: ...
    def pending_mail(self, recipient_id: int, after_seq: int = 0, limit: int = 256,
                     device: bytes | None = None) -> list[MailItem]:
        """The account's version-1 mail and `device`'s version-2 mail after `after_seq`, oldest first."""
        ...

    def take_mail(self, recipient_id: int, seq: int, device: bytes | None = None) -> Taken | None:
        """Delete one acknowledged row of this session's (its device's, or version 1)."""
        ...
    def expire_mail(self, stored_before_ms: int, limit: int) -> list[Expired]:
        """Drop direct messages stored before the cutoff, among the `limit` oldest (--mailbox-ttl)."""
        ...

    def close(self) -> None: ...
