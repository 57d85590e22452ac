"""The client's trust order (client/trust.py), without a socket.

Real certificates (certgen's own functions), a real known_servers file in a temporary home; the
chain a server would present comes from `probe`, the seam resolve_trust uses instead of
tls.fetch_server_chain. Each branch of the order: --ca, known_servers (and the legacy leaf
migration), the home's CA, --pin on first contact, and the answer-gated TOFU probe.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization

from securecomm.client.trust import resolve_trust
from securecomm.crypto import certs
from securecomm.errors import NotFoundError, TLSError
from securecomm.net import tls

HOST, PORT = "127.0.0.1", 7443
ADDRESS = f"{HOST}:{PORT}"


def der(issued: certs.Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki():
    ca = certs.make_ca()
    other = certs.make_ca()
    return SimpleNamespace(ca=ca, leaf=certs.make_server(ca, [HOST]), other=other,
                           other_leaf=certs.make_server(other, [HOST]))


class Probe:
    """What a server presents: records each call, so a test can say the probe was never made."""

    def __init__(self, chain: list[bytes]) -> None:
        self.chain, self.calls = chain, 0

    def __call__(self, host: str, port: int) -> list[bytes]:
        assert (host, port) == (HOST, PORT)
        self.calls += 1
        return self.chain


def home(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(known_servers=tmp_path / "known_servers", ca_cert=tmp_path / "ca.pem")


def fp(issued: certs.Issued) -> str:
    return tls.spki_fingerprint(der(issued))


def presents(pki: SimpleNamespace) -> Probe:
    return Probe([der(pki.leaf), der(pki.ca)])


# -- 1. --ca FILE ---------------------------------------------------------------------------------
def test_ca_file_is_used_without_probing_and_remembered(tmp_path, pki):
    paths = home(tmp_path)
    ca_file = tmp_path / "given-ca.pem"
    ca_file.write_bytes(pki.ca.cert_pem)
    probe = Probe([])
    trust = resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=probe)
    assert (trust.how, trust.anchor_fingerprint, probe.calls) == ("ca", fp(pki.ca), 0)
    assert trust.remember is not None  # pinned once the verified connection succeeds
    trust.verified()
    assert tls.KnownServers(paths.known_servers).get(ADDRESS).fingerprint == fp(pki.ca)
    with_pin = resolve_trust(paths, HOST, PORT, ca=str(ca_file), pin=fp(pki.ca), probe=probe)
    assert with_pin.how == "ca+pin" and with_pin.remember is None  # the pin is compared after the handshake


def test_a_ca_file_that_now_holds_another_ca_is_a_changed_certificate(tmp_path, pki):
    """The new-user check: the profile's saved --ca path was read afresh each time, so after
    `certgen --new-ca` rewrote that file every command trusted the new CA without a word."""
    paths = home(tmp_path)
    tls.KnownServers(paths.known_servers).add(ADDRESS, der(pki.ca))  # what the file held at login
    ca_file = tmp_path / "given-ca.pem"
    ca_file.write_bytes(pki.other.cert_pem)
    with pytest.raises(TLSError, match="HAS CHANGED") as e:
        resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=Probe([]))
    assert "user login NAME --ca FILE" in (e.value.hint or "")
    # logging in again with that file is how a user accepts a new CA the operator confirmed
    trust = resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=Probe([]), replace_known=True)
    assert trust.replaced == fp(pki.ca)  # `user login` names the CA it replaced (the new-user check: silent)
    trust.verified()
    assert tls.KnownServers(paths.known_servers).get(ADDRESS).fingerprint == fp(pki.other)
    again = resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=Probe([]), replace_known=True)
    assert again.replaced is None  # the same CA: nothing replaced, nothing said
    ca_file.unlink()
    with pytest.raises(NotFoundError, match=r"CA file .* does not exist") as gone:
        resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=Probe([]))
    assert "--ca" in (gone.value.hint or "")


# -- 2. known_servers -----------------------------------------------------------------------------
def test_known_server_wins_over_the_home_ca_and_is_not_probed(tmp_path, pki):
    paths = home(tmp_path)
    paths.ca_cert.write_bytes(pki.other.cert_pem)
    tls.KnownServers(paths.known_servers).add(ADDRESS, der(pki.ca))
    probe = Probe([])
    trust = resolve_trust(paths, HOST, PORT, probe=probe)
    assert (trust.how, trust.anchor_fingerprint, probe.calls) == ("known_servers", fp(pki.ca), 0)
    assert trust.remember is None  # already remembered


def test_a_pin_that_contradicts_known_servers_is_refused(tmp_path, pki):
    paths = home(tmp_path)
    tls.KnownServers(paths.known_servers).add(ADDRESS, der(pki.ca))
    with pytest.raises(TLSError, match="does not match the CA remembered"):
        resolve_trust(paths, HOST, PORT, pin=fp(pki.other), probe=Probe([]))


def legacy_line(paths: SimpleNamespace, leaf: bytes) -> None:
    """What an older version wrote: the server's own certificate, named by its whole-DER hash."""
    paths.known_servers.write_text(f"{ADDRESS} {tls.der_fingerprint(leaf)} {base64.b64encode(leaf).decode()}\n")


def test_a_legacy_leaf_pin_migrates_to_the_ca_that_issued_it(tmp_path, pki):
    paths = home(tmp_path)
    legacy_line(paths, der(pki.leaf))
    trust = resolve_trust(paths, HOST, PORT, probe=presents(pki))
    assert (trust.how, trust.anchor_fingerprint) == ("known_servers", fp(pki.ca))
    assert trust.migrated_from == tls.der_fingerprint(der(pki.leaf))
    assert tls.KnownServers(paths.known_servers).get(ADDRESS).legacy  # not rewritten before a verified connection
    trust.verified()
    assert not tls.KnownServers(paths.known_servers).get(ADDRESS).legacy


def test_a_legacy_leaf_pin_with_another_ca_is_a_changed_certificate(tmp_path, pki):
    paths = home(tmp_path)
    legacy_line(paths, der(pki.leaf))
    with pytest.raises(TLSError, match="HAS CHANGED"):
        resolve_trust(paths, HOST, PORT, probe=Probe([der(pki.other_leaf), der(pki.other)]))


def test_a_legacy_leaf_pin_stays_while_the_server_sends_no_ca(tmp_path, pki):
    paths = home(tmp_path)
    legacy_line(paths, der(pki.leaf))
    trust = resolve_trust(paths, HOST, PORT, probe=Probe([der(pki.leaf)]))
    assert (trust.how, trust.anchor_der, trust.remember) == ("known_servers", der(pki.leaf), None)


# -- 3. the CA certgen made in this home ----------------------------------------------------------
def test_the_home_ca_is_used_without_probing(tmp_path, pki):
    paths = home(tmp_path)
    paths.ca_cert.write_bytes(pki.ca.cert_pem)
    probe = Probe([])
    assert resolve_trust(paths, HOST, PORT, probe=probe).how == "ca"
    assert resolve_trust(paths, HOST, PORT, pin=fp(pki.ca), probe=probe).how == "pin"
    assert probe.calls == 0


def test_a_pin_naming_another_ca_skips_the_home_ca(tmp_path, pki):
    paths = home(tmp_path)
    paths.ca_cert.write_bytes(pki.other.cert_pem)
    probe = presents(pki)
    trust = resolve_trust(paths, HOST, PORT, pin=fp(pki.ca), probe=probe)
    assert (trust.how, trust.anchor_fingerprint, probe.calls) == ("pin", fp(pki.ca), 1)


# -- 4. --pin on first contact --------------------------------------------------------------------
def test_first_contact_with_a_matching_pin_is_remembered_only_once_verified(tmp_path, pki):
    paths = home(tmp_path)
    trust = resolve_trust(paths, HOST, PORT, pin=fp(pki.ca), probe=presents(pki))
    assert (trust.how, trust.anchor_fingerprint) == ("pin", fp(pki.ca))
    assert not paths.known_servers.exists()
    trust.verified()
    assert tls.KnownServers(paths.known_servers).get(ADDRESS).fingerprint == fp(pki.ca)


def test_first_contact_with_a_wrong_pin_names_the_presented_ca(tmp_path, pki):
    with pytest.raises(TLSError, match=re.escape(f"the CA of {ADDRESS} is {fp(pki.ca)}, not the pinned")):
        resolve_trust(home(tmp_path), HOST, PORT, pin=fp(pki.other), probe=presents(pki))


# -- 5. first contact, asked ----------------------------------------------------------------------
def test_first_contact_asks_with_the_ca_fingerprint_and_trusts_on_yes(tmp_path, pki):
    asked = []
    trust = resolve_trust(home(tmp_path), HOST, PORT, ask=lambda a, f: asked.append((a, f)) or True,
                          probe=presents(pki))
    assert (trust.how, asked) == ("tofu", [(ADDRESS, fp(pki.ca))])


@pytest.mark.parametrize("ask", [None, lambda a, f: False], ids=["no-terminal", "answered-no"])
def test_first_contact_without_a_yes_is_refused_with_the_fingerprint(tmp_path, pki, ask):
    paths = home(tmp_path)
    with pytest.raises(TLSError, match="is not trusted") as e:
        resolve_trust(paths, HOST, PORT, ask=ask, probe=presents(pki))
    assert fp(pki.ca) in e.value.hint
    assert not paths.known_servers.exists()


def test_a_ca_file_is_held_to_the_ca_another_relay_of_the_list_was_trusted_with(tmp_path, pki):
    """The re-check: relay A was down at login (only B's CA was remembered); after the file came to hold
    another CA, A was trusted with it silently, and known_servers held two CAs for one deployment."""
    paths = home(tmp_path)
    tls.KnownServers(paths.known_servers).add("relay-b:7443", der(pki.ca))
    ca_file = tmp_path / "given-ca.pem"
    ca_file.write_bytes(pki.other.cert_pem)
    with pytest.raises(TLSError, match="HAS CHANGED"):
        resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=Probe([]), siblings=("relay-b:7443",))
    ca_file.write_bytes(pki.ca.cert_pem)  # the deployment's CA: A is trusted, and remembered
    trust = resolve_trust(paths, HOST, PORT, ca=str(ca_file), probe=Probe([]), siblings=("relay-b:7443",))
    assert trust.remember is not None and trust.anchor_fingerprint == fp(pki.ca)
