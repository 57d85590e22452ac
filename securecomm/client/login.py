"""Connecting as a logged-in user: profile -> trust -> TLS -> hello -> key login."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from securecomm.client.connection import Client
from securecomm.client.trust import resolve_trust
from securecomm.config import Profile, format_address, parse_address
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import IntegrityError


def prepare(paths: Any, server: str, *, ca: str | None = None, pin: str | None = None,
            ask: Callable[[str, str], bool] | None = None) -> Client:
    """Decide how the server is trusted (may ask the user) before any login starts."""
    host, port = parse_address(server)
    if pin is not None:
        check_pin_format(pin)
    return Client(host, port, resolve_trust(paths, host, port, ca=ca, pin=pin, ask=ask), pin=pin)


def check_pin_format(pin: str) -> None:
    """A pin is `SHA256:` + base64 of 32 bytes; anything else is a typo, not a mismatch."""
    import base64
    import binascii

    from securecomm.errors import UsageError

    body = pin.strip()
    prefixed = body.startswith("SHA256:")
    body = body.removeprefix("SHA256:").rstrip("=")
    try:
        ok = len(base64.b64decode(body + "=" * (-len(body) % 4), validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if ok and not prefixed:
        raise UsageError(f"--pin {pin[:60]!r} lacks the SHA256: prefix", hint=f"use --pin SHA256:{body}")
    if not ok:
        raise UsageError(f"--pin {pin[:60]!r} is not a fingerprint",
                         hint="it looks like SHA256:<43 base64 characters>, as certgen and serve print it")


async def connect(paths: Any, server: str, *, ca: str | None = None, pin: str | None = None,
                  ask: Callable[[str, str], bool] | None = None) -> Client:
    client = prepare(paths, server, ca=ca, pin=pin, ask=ask)
    try:
        await client.connect()
    except BaseException:
        await client.close()
        raise
    return client


async def connect_profile(paths: Any, identity: PrivateIdentity, *, server: str | None = None,
                          ca: str | None = None, pin: str | None = None,
                          ask: Callable[[str, str], bool] | None = None) -> tuple[Client, Profile]:
    """Connect with the saved profile and log in with the identity key."""
    profile = Profile.load(paths.profile)
    client = await connect(paths, server or profile.server, ca=ca or profile.ca, pin=pin or profile.pin, ask=ask)
    try:
        if not pin:
            migrate_profile_pin(paths, profile, client)
        check_server_identity(client, profile)
        await client.login_key(profile.user, identity)
    except BaseException:
        await client.close()
        raise
    return client, profile


def saved_pin(pin: str | None, client: Client) -> str | None:
    """The pin to keep in a profile: a legacy leaf pin just migrated becomes the CA's."""
    from securecomm.net.tls import fingerprints_equal

    migrated = client.trust.migrated_from
    if pin and migrated and fingerprints_equal(pin, migrated):
        return client.trust.anchor_fingerprint
    return pin


def migrate_profile_pin(paths: Any, profile: Profile, client: Client) -> None:
    """After known_servers moved from a leaf pin to the CA, the profile's pin follows,
    or the next connection would find the old pin no longer matches."""
    new = saved_pin(profile.pin, client)
    if new != profile.pin:
        profile.pin = new
        profile.save(paths.profile)


def check_server_identity(client: Client, profile: Profile) -> None:
    """The server's message key is pinned at login; a change is a hard failure."""
    from securecomm.crypto.identity import PublicIdentity

    if not profile.server_identity or client.server_identity is None:
        return
    known = PublicIdentity.from_line_cached(profile.server_identity)
    if not same(known.fingerprint, client.server_identity.fingerprint):
        raise IntegrityError(
            f"WARNING: the server's message identity CHANGED from {known.fingerprint_text} to "
            f"{client.server_identity.fingerprint_text}; messages will not be sealed to it",
            hint="if the operator confirms the change, log in again: securecomm user login NAME")


def address_of(client: Client) -> str:
    return format_address(client.host, client.port)
