"""A database or bus URL as messages and logs show it: without its secrets. Needs no driver, so
that the error about a missing driver (store/backends.py) names the URL too.

A URL may carry a secret in three places: the password of `user:password@` (both), a query
parameter (libpq takes `?password=` and `?sslpassword=`), and, for NATS, the user part alone
(`nats://TOKEN@host`: nats-py sends it as the token). The attacker's check found the last two
printed by `serve --print-config` and in "cannot reach" errors, which reach the logs.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

#: Query parameters whose value is a secret (libpq's connection parameters; NATS-style token).
SECRET_PARAMS = frozenset({"password", "sslpassword", "token", "pass", "nkey", "jwt"})
#: Schemes whose user part alone is a secret (a NATS token).
TOKEN_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
HIDDEN = "(hidden)"


def redact(url: str) -> str:
    """The URL without its password (dropped) and with secret parameters and tokens masked."""
    return _hidden(url, None)


def mask(url: str) -> str:
    """Like redact, but a password shows as (hidden) in its place: for --print-config, which says so."""
    return _hidden(url, HIDDEN)


def _hidden(url: str, password: str | None) -> str:
    """`password`: what stands for a password in the user part (None: it is dropped, with its colon)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if colon and password is not None:
            user = f"{user}:{password}"
        elif not colon and parts.scheme.lower() in TOKEN_SCHEMES:
            user = HIDDEN
        netloc = f"{user}@{host}" if user else host
    return _join(parts, netloc)


def _join(parts: SplitResult, netloc: str) -> str:
    """The URL again, by hand: urlunsplit drops an empty host, and `postgresql:///db?host=/run/postgresql`
    (a Unix socket) must stay that, or --print-config's output is no longer a config libpq reads."""
    query = _masked_query(parts.query)
    out = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    return out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def _masked_query(query: str) -> str:
    if not query:
        return query
    out = []
    for item in query.split("&"):
        key, eq, _ = item.partition("=")
        # libpq decodes the name too: ?pass%77ord= is a password (the re-check)
        out.append(f"{key}={HIDDEN}" if eq and unquote(key).strip().lower() in SECRET_PARAMS else item)
    return "&".join(out)
