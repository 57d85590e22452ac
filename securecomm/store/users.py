"""How an account row is shown (`user list`, locally and over the wire): one place, no asyncio."""

from __future__ import annotations

from typing import Any

from securecomm.store.db import User


def user_row(u: User) -> dict[str, Any]:
    """The columns `user list` shows; the key fingerprint in its display form."""
    from securecomm.crypto.identity import PublicIdentity, format_fingerprint

    return {
        "name": u.name,
        "role": u.role,
        "created": u.created_at,
        "last_login": u.last_login,
        "locked": u.locked(),
        "failed_logins": u.failed_logins,
        "fingerprint": format_fingerprint(PublicIdentity.decode_cached(u.identity).fingerprint) if u.identity else None,
    }
