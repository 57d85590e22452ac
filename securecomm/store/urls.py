"""A database URL as messages and logs show it: without its password. Needs no driver, so that the
error about a missing driver (store/backends.py) names the URL too."""

from __future__ import annotations


def redact(url: str) -> str:
    """The URL without its password, for messages and logs (no driver needed: an error about a
    missing driver names the URL too)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + host))
