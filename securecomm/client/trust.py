"""The client's trust order: which CA a connection to a server must verify against.

TLS contexts themselves are built in net/tls.py (the one place, for both wings); this module
only decides which anchor, in this order:

1. `--ca FILE`                                  how = "ca" ("ca+pin" with --pin)
                                                (held to known_servers: see below)
2. the CA of this server in known_servers       how = "known_servers"  (a change is a hard failure)
3. the CA that certgen made in the same home    how = "ca" ("pin" with a matching --pin)
4. the CA whose fingerprint --pin names         how = "pin"       (saved to known_servers)
5. first contact, interactive: ask the user     how = "tofu"      (then saved to known_servers)

Cases 4 and 5 need the CA before it is trusted: `probe` (tls.pq_fetch_server_chain unless a test
passes another) makes one handshake that does not verify, reads the chain the server
presented and closes without sending application data, exactly as OpenSSH reads a host key
before asking "are you sure?". Nothing is trusted because of that handshake: the user's answer
(or the --pin fingerprint, compared in constant time) decides, and the real connection then
verifies the chain and the hostname against that CA. known_servers is written only after that
verified connection has succeeded (Trust.verified, called by Client.connect).

A CA file is a path, and what is at that path can change (the Quickstart points at the server's own
tls/ca.pem; `certgen --new-ca` rewrites it). So the CA it held at first use is remembered in
known_servers like a --pin, and a file that later holds another CA is the same hard failure as any
changed CA (the new-user check: the profile's saved --ca trusted whatever the file became). Only
`user login --ca FILE` (replace_known) may replace the remembered CA: logging in is where trust is set.

Older versions saved the server's own certificate (a "leaf pin") in known_servers. Such a line
is accepted once, if the CA the server now presents issued that very certificate; the CA then
replaces it (_migrate). An older server that presents that same certificate and no CA keeps
the leaf pin in use until it is upgraded.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securecomm.crypto.integrity import same
from securecomm.errors import NotFoundError, TLSError
from securecomm.net import tls

#: Reads the chain a server presents, without trusting it (cases 2-migration, 4 and 5).
Probe = Callable[[str, int], list[bytes]]

@dataclass
class Trust:
    #: A pq transport context (tls.pq_client_context, the default) or, built by hand, a stdlib SSLContext.
    context: ssl.SSLContext | Any
    how: str  # ca | ca+pin | known_servers | pin | tofu
    anchor_fingerprint: str
    anchor_der: bytes = b""  # the CA trusted (DER)
    #: Saved to known_servers only once a verified connection has succeeded
    #: (Client.connect): a typo'd address or a failed handshake leaves no line.
    remember: tuple[tls.KnownServers, str] | None = None
    #: The legacy leaf fingerprint this trust replaced (see tls module docstring).
    migrated_from: str | None = None
    #: `user login --ca FILE` replaced this CA fingerprint remembered for the server (told to the user).
    replaced: str | None = None

    def verified(self) -> None:
        """Called after the verified connection succeeded: remember the CA if asked to."""
        if self.remember is not None:
            known, address = self.remember
            known.add(address, self.anchor_der)
            self.remember = None


def resolve_trust(paths: Any, host: str, port: int, *, ca: str | None = None, pin: str | None = None,
                  ask: Any = None, probe: Probe = tls.pq_fetch_server_chain, replace_known: bool = False,
                  siblings: tuple[str, ...] = ()) -> Trust:
    """Choose the trust anchor (the order and why: the module docstring). `siblings`: the other relays
    of the same list (one deployment, one CA): a CA file is held to the CA remembered for any of them."""
    from securecomm.config import format_address
    from securecomm.files import read_file

    address = format_address(host, port)
    known = tls.KnownServers(paths.known_servers)
    entry = known.get(address)
    if ca:
        try:
            pem = read_file(Path(ca).expanduser())
        except NotFoundError as e:  # the new-user check: a moved CA file was a bare "... does not exist"
            raise NotFoundError(f"the server's CA file {ca} does not exist", hint=(
                "it was given with --ca (`user login --ca` saves its path in the profile): pass --ca with where "
                "it is now, or log in again with `securecomm user login NAME --ca FILE`")) from e
        trust = _checked(_ca_trust(tls.pq_client_context(pem), "ca", pem), pin)
        # a relay of the list not reached before is held to the CA another one was trusted with (the
        # re-check: relay A down at login, then a new CA in the file was trusted for A silently)
        held = entry or next((e for e in map(known.get, siblings) if e is not None and not e.legacy), None)
        if held is not None and not held.legacy and not replace_known and \
                not same(held.fingerprint.encode(), trust.anchor_fingerprint.encode()):
            raise changed_error(held.address, held.fingerprint)
        if entry is None or replace_known:
            trust.remember = (known, address)  # after the verified connection: held to this CA from now on
            if entry is not None and not same(entry.fingerprint.encode(), trust.anchor_fingerprint.encode()):
                trust.replaced = entry.fingerprint
        return trust
    if entry is not None:
        return _known(entry, host, port, pin, known, probe)
    if paths.ca_cert.exists():
        pem = read_file(paths.ca_cert)
        if not pin:
            return _ca_trust(tls.pq_client_context(pem), "ca", pem)
        if tls.pin_matches(pin, tls.pem_to_der(pem)):
            return _ca_trust(tls.pq_client_context(pem), "pin", pem)
    return _first_contact(address, host, port, pin, ask, known, probe)


def _ca_trust(context: ssl.SSLContext | Any, how: str, pem: bytes) -> Trust:
    return Trust(context, how, tls.pem_fingerprint(pem), tls.pem_to_der(pem))


def _pinned(ca_der: bytes, how: str, **kw: Any) -> Trust:
    pem = ssl.DER_cert_to_PEM_cert(ca_der).encode()
    return Trust(tls.pq_client_context(pem, pinned=True), how, tls.spki_fingerprint(ca_der), ca_der, **kw)


def _known(entry: tls.KnownServer, host: str, port: int, pin: str | None, known: tls.KnownServers,
           probe: Probe) -> Trust:
    trust = _migrate(entry, host, port, known, probe) if entry.legacy else _pinned(entry.der, "known_servers")
    # During a migration the pin may name the saved leaf (older versions) or its CA (as certgen prints).
    if pin and not (tls.pin_matches(pin, trust.anchor_der) or tls.pin_matches(pin, entry.der)):
        raise TLSError(f"the pin {pin} (given with --pin or saved in the profile) does not match the CA "
                       f"remembered for {entry.address} ({trust.anchor_fingerprint})",
                       hint="if the operator confirms that CA, log in again with --pin "
                            f"{trust.anchor_fingerprint} to save it in the profile")
    return trust


def _migrate(entry: tls.KnownServer, host: str, port: int, known: tls.KnownServers, probe: Probe) -> Trust:
    """A leaf pin from an older version: accept it once if the CA the server
    presents now issued that very leaf, then pin that CA instead.

    The saved leaf was trusted by the user; a CA whose key signed it is the
    CA that user trusted, whatever leaf (renewed or not) the server shows now.
    """
    chain = probe(host, port)
    if len(chain) == 1 and same(chain[0], entry.der):
        # An older server that does not send its CA yet: keep the leaf pin until it does.
        return Trust(tls.pq_client_context(entry.cert_pem, pinned=True), "known_servers", entry.fingerprint, entry.der)
    ca_der = tls.presented_ca(chain)
    if not tls.issued_by(entry.der, ca_der):
        raise changed_error(entry.address, entry.fingerprint)
    return _pinned(ca_der, "known_servers", remember=(known, entry.address), migrated_from=entry.fingerprint)


def _first_contact(address: str, host: str, port: int, pin: str | None, ask: Any,
                   known: tls.KnownServers, probe: Probe) -> Trust:
    ca_der = tls.presented_ca(probe(host, port))
    fp = tls.spki_fingerprint(ca_der)
    if pin:
        if not tls.pin_matches(pin, ca_der):
            raise TLSError(f"the CA of {address} is {fp}, not the pinned {pin}")
        how = "pin"
    elif ask is not None and ask(address, fp):
        how = "tofu"
    else:
        raise TLSError(f"the CA of {address} is not trusted; its fingerprint is {fp}",
                       hint=f"check it with the server's operator, then pass --pin {fp} (or --ca FILE)")
    return _pinned(ca_der, how, remember=(known, address))


def changed_error(address: str, fingerprint: str) -> TLSError:
    return TLSError(
        f"WARNING: THE CERTIFICATE OF {address} HAS CHANGED since it was first trusted "
        f"({fingerprint}); someone may be intercepting the connection",
        hint="if the operator confirms a new CA, log in again with `securecomm user login NAME --ca FILE` (the "
             "new CA file), or remove its line from known_servers (`securecomm paths` shows where) and log in "
             "again with --pin and the new fingerprint")


def _checked(trust: Trust, pin: str | None) -> Trust:
    if pin:
        trust.how = "ca+pin"  # Client._check_pin compares CA or leaf with the pin after the handshake
    return trust
