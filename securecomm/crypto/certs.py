"""A local certificate authority and TLS server certificates (x509 builders).

The CA is ECDSA P-256, valid 10 years, CA:true with pathlen 0 (it signs
server certificates only, never another CA) and keyCertSign/cRLSign. Server
certificates are ECDSA P-256, valid 90 days by default and at most 397 (the
CA/Browser Forum limit, so that habits learnt here carry over), with the
serverAuth EKU and SANs for loopback, the machine's hostname and any extra
names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securecomm.crypto.integrity import format_fingerprint, sha256
from securecomm.errors import FormatError, TLSError, UsageError

CA_DAYS = 3650
DEFAULT_SERVER_DAYS = 90
MAX_SERVER_DAYS = 397
# Hosts every server certificate names: clients on the same machine must be
# able to reach it by any loopback spelling with hostname checks on.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between machines
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


def fingerprint(cert: x509.Certificate) -> str:
    """`SHA256:<base64>` over the certificate's SubjectPublicKeyInfo (DER): the form clients pin.

    certgen and serve print it for the CA, the first-contact prompt shows it,
    --pin takes it and known_servers stores it. It hashes the key, not the
    whole certificate (as HPKP and DANE SPKI pins do), so one CA key means one
    fingerprint, and a renewed server certificate from that CA changes nothing.
    """
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return format_fingerprint(sha256(spki))


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether `parent`'s key signed `child` (names, algorithm and signature checked)."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def chain_anchor(chain: list[x509.Certificate]) -> x509.Certificate:
    """The CA at the top of a chain as a server presented it (leaf first), checked link by link.

    Each certificate must be signed by the next, and the top one must be a CA
    (or the whole chain one self-signed certificate). This is no verdict of
    trust: it only finds the certificate whose fingerprint the user is asked
    about; the real connection then verifies chain and hostname against it.
    """
    if not chain:
        raise TLSError("the server presented no certificate")
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            raise TLSError("the server presented a broken certificate chain")
    top = chain[-1]
    if len(chain) == 1 and not issued_by(top, top):
        raise TLSError("the server presented its certificate without the CA that issued it",
                       hint="the operator should run `securecomm certgen --force` (same CA, full chain); "
                            "or pass --ca FILE")
    if len(chain) > 1 and not is_ca(top):
        raise TLSError("the top of the server's certificate chain is not a CA")
    return top


def check_host(name: str) -> x509.GeneralName:
    """A SAN entry for a DNS name or an IP address; anything else is refused."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise UsageError(f"--host {name!r} is neither a DNS name nor an IP address")
    return x509.DNSName(name.rstrip(".").lower())


def server_hosts(extra: tuple[str, ...] = ()) -> list[str]:
    hosts = list(DEFAULT_HOSTS)
    hostname = socket.gethostname()
    candidates = [hostname, *extra] if hostname else list(extra)
    for h in candidates:
        try:
            check_host(h)
        except UsageError:
            if h in extra:
                raise
            continue  # an odd local hostname is skipped, not fatal
        if h.lower() not in (x.lower() for x in hosts):
            hosts.append(h)
    return hosts


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(common_name: str | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securecomm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"securecomm local CA ({socket.gethostname()})"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_server(ca: Issued, hosts: list[str], days: int = DEFAULT_SERVER_DAYS) -> Issued:
    if not 1 <= days <= MAX_SERVER_DAYS:
        raise UsageError(f"--days must be between 1 and {MAX_SERVER_DAYS}, not {days}")
    sans = [check_host(h) for h in hosts]
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def load_cert(data: bytes, path: Path | str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise FormatError(f"{path} is not a PEM certificate") from e


def load_ca(cert_pem: bytes, key_pem: bytes, path: Path | str = "CA") -> Issued:
    cert = load_cert(cert_pem, path)
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{path}: unreadable CA key") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise FormatError(f"{path}: CA key does not match the CA certificate")
    return Issued(cert, key)


def san_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]
