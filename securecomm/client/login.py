"""Connecting as a logged-in user: profile -> trust -> TLS -> hello -> key login."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from securecomm.client.connection import Client
from securecomm.client.trust import resolve_trust
from securecomm.config import Profile, format_address, parse_address, parse_servers
from securecomm.crypto.identity import PrivateIdentity
from securecomm.crypto.integrity import same
from securecomm.errors import AuthError, IntegrityError, NetworkError, SecurecommError, TLSError

log = logging.getLogger("securecomm.client")
T = TypeVar("T")


def prepare(paths: Any, server: str, *, ca: str | None = None, pin: str | None = None,
            ask: Callable[[str, str], bool] | None = None, replace_known: bool = False,
            siblings: tuple[str, ...] = ()) -> Client:
    """Decide how the server is trusted (may ask the user) before any login starts.
    `replace_known`: `user login --ca FILE`, whose CA replaces the one remembered (client/trust.py)."""
    host, port = parse_address(server)
    if pin is not None:
        check_pin_format(pin)
    return Client(host, port, resolve_trust(paths, host, port, ca=ca, pin=pin, ask=ask, replace_known=replace_known,
                                            siblings=siblings), pin=pin)


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


def candidates(paths: Any, servers: str, *, ca: str | None = None, pin: str | None = None,
               ask: Callable[[str, str], bool] | None = None, replace_known: bool = False) -> Iterator[Client]:
    """A client for each listed relay, in order, prepared only when the one before failed.

    All relays of a deployment have certificates from one CA: after the first, each is held to
    the CA the first was trusted with (as a pin), so a failover never asks or trusts anew."""
    shared = pin
    listed = tuple(format_address(host, port) for host, port in parse_servers(servers))
    for address in listed:
        client = prepare(paths, address, ca=ca, pin=shared, ask=ask, replace_known=replace_known,
                         siblings=tuple(a for a in listed if a != address))
        if shared is None and ca is None:
            shared = client.trust.anchor_fingerprint
        yield client


async def first_answer(clients: Iterator[Client], then: Callable[[Client], Awaitable[T]]) -> tuple[Client, T]:
    """Connect to each client in turn until one connects and `then` succeeds on it; that client stays open.

    Only a refused, dropped or timed-out connection moves on to the next relay; a TLS, trust or
    login failure is the answer (another relay of the same deployment would give the same)."""
    failure: NetworkError | None = None
    for client in clients:
        try:
            await client.connect()
            return client, await then(client)
        except TLSError:
            await client.close()
            raise
        except NetworkError as e:
            await client.close()
            log.info("%s:%s: %s; trying the next server", client.host, client.port, e.message)
            failure = e
        except BaseException:
            await client.close()
            raise
    assert failure is not None  # parse_servers never returns an empty list
    raise failure


async def connect(paths: Any, server: str, *, ca: str | None = None, pin: str | None = None,
                  ask: Callable[[str, str], bool] | None = None) -> Client:
    """Connected to the first listed server that answers (`a:7443,b:7443`: see candidates)."""
    client, _ = await first_answer(candidates(paths, server, ca=ca, pin=pin, ask=ask), _nothing)
    return client


async def _nothing(client: Client) -> None:
    return None


async def connect_profile(paths: Any, identity: PrivateIdentity, *, server: str | None = None,
                          ca: str | None = None, pin: str | None = None,
                          ask: Callable[[str, str], bool] | None = None) -> tuple[Client, Profile]:
    """Connect with the saved profile and log in with the identity key."""
    profile = Profile.load(paths.profile)

    async def log_in(client: Client) -> None:
        if not pin:
            migrate_profile_pin(paths, profile, client)
        check_server_identity(client, profile)
        try:
            await client.login_key(profile.user, identity)
        except AuthError as e:  # a removed device that asked to be paired again is told DEVICE_REMOVED
            waiting_to_be_paired(paths, profile, e)
            raise
        paired_meanwhile(paths, profile, identity)

    servers = candidates(paths, server or profile.server, ca=ca or profile.ca, pin=pin or profile.pin, ask=ask)
    client, _ = await first_answer(servers, log_in)
    return client, profile


def waiting_to_be_paired(paths: Any, profile: Profile, refused: AuthError) -> None:
    """A key login refused for a device that waits to be paired (docs/PROTOCOL.md 6.4) is no unknown
    key: say what it waits for, and what to run (the server only knows it as not listed)."""
    import time

    from securecomm.store.devicekeys import pairing_of

    try:
        waiting = pairing_of(paths.device_keys(profile.identity))
    except SecurecommError:
        return
    if waiting is None or waiting.get("user") != profile.user:
        return
    code, again = waiting["code"], f"securecomm user login {profile.user}"
    expires = waiting.get("expires_ms")
    if isinstance(expires, int) and expires <= time.time() * 1000:
        raise AuthError(f"this device waits to be paired with {profile.user}'s devices, and its pairing code "
                        f"{code} has expired", hint=f"for a new code, run here: {again}") from refused
    fingerprint = ""
    try:  # the approving device checks it (attack check: a code alone lets the server substitute a device)
        from securecomm.crypto.identity import load_public

        fingerprint = f" --fingerprint {load_public(paths.identity_pub(profile.identity)).fingerprint_text}"
    except (OSError, SecurecommError):
        pass
    raise AuthError(f"this device waits to be paired with {profile.user}'s devices (pairing code {code}): it "
                    "cannot send or read until a device you already have approves it",
                    hint=f"on that device: securecomm devices approve {code}{fingerprint}; then here: {again}"
                    ) from refused


def paired_meanwhile(paths: Any, profile: Profile, identity: PrivateIdentity) -> None:
    """A key login succeeded: the device is listed, so a pairing it waited for is over."""
    from securecomm.store.devicekeys import DeviceKeys, pairing_of

    folder = paths.device_keys(profile.identity)
    if pairing_of(folder) is not None:
        DeviceKeys(folder, identity.kem).clear_pairing()


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
