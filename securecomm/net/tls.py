"""TLS contexts, certificate pinning and known_servers.

Two transports (issue 14). The default, "pq", is net/pqtls.py on pyOpenSSL,
with the pq_ contexts below (built in net/pqcontext.py): key exchange
X25519MLKEM768 first, then X25519, P-256, P-384. "stdlib" (`serve --tls
stdlib`) is Python's ssl, whose OpenSSL 3.0 has no ML-KEM: X25519 only (see
GROUPS). Both follow the same rules:

Server: TLS 1.3 only (Mozilla "modern"), and the full chain from certgen
(server certificate, then its CA).
Client: CERT_REQUIRED and hostname checking, always. Which CA is the
anchor (the trust order, TOFU, known_servers migration) is decided in
client/trust.py; this module only builds the contexts and reads the chain.

One fingerprint means one thing: SHA-256 over the CA's SubjectPublicKeyInfo,
`SHA256:<base64>` (crypto.certs.fingerprint). certgen and serve print it,
the prompt shows it, --pin takes it, known_servers stores it. A renewed
server certificate from the same CA changes none of them.

`fetch_server_chain` reads a server's chain without verifying it, for
client/trust.py's first-contact and migration cases only: nothing is
trusted because of that handshake.
"""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from securecomm.crypto import certs
from securecomm.crypto.integrity import format_fingerprint, same, sha256
from securecomm.errors import FormatError, TLSError
from securecomm.files import PRIVATE_MODE, read_file, write_files

#: The only key-exchange group, for server and client alike. OpenSSL 3.0's
#: default list also has X448, P-521 and ffdhe2048..8192: one replayed
#: ClientHello asking for ffdhe8192 cost the server ~95 ms of event-loop CPU.
#: Mozilla "modern" allows X25519, P-256 and P-384, but Python 3.11's ssl can
#: set only one group (set_ecdh_curve calls SSL_CTX_set1_groups with one NID;
#: there is no set1_groups_list), and an OpenSSL config file would apply to
#: every context in the process, not only ours. X25519 is the group that
#: OpenSSL's own clients (Python's default context, openssl s_client, curl)
#: send a key share for, so they connect with no extra round trip. A client
#: that offers only P-256 or P-384 is refused. The pq transport sets a list
#: (pqcontext.GROUPS: X25519MLKEM768:X25519:P-256:P-384).
GROUPS = "X25519"


def _restrict_groups(ctx: ssl.SSLContext) -> None:
    ctx.set_ecdh_curve(GROUPS)


# -- the post-quantum transport (issue 14; the pyOpenSSL specifics are in net/pqcontext.py) ---------
#: `serve --tls`: "pq" (pyOpenSSL, X25519MLKEM768 first; the default, as it met every
#: figure: benchmarks/RESULTS.md section 9) or "stdlib" (Python's ssl, X25519 only).
TRANSPORTS = ("pq", "stdlib")


def pq_server_context(cert: Path, key: Path, ca: Path | None = None, *, require_pq: bool = False) -> Any:
    """TLS 1.3, X25519MLKEM768:X25519:P-256:P-384 (or the first alone), the chain as server_context loads it."""
    from securecomm.net import pqcontext

    return pqcontext.server_context(cert, key, ca, require_pq=require_pq)


_PQ_CONTEXTS: dict[tuple[bytes, bool], Any] = {}


def pq_client_context(anchor_pem: bytes, *, pinned: bool = False) -> Any:
    """The client's context on the pq transport: chain and pin rules as client_context; each connection
    adds the hostname check (pqtls.new_connection). Cached per anchor, as client_context is."""
    from securecomm.net import pqcontext

    key = (anchor_pem, pinned)
    if key not in _PQ_CONTEXTS:
        _PQ_CONTEXTS[key] = pqcontext.client_context(anchor_pem, pinned=pinned)
    return _PQ_CONTEXTS[key]


def pq_fetch_server_chain(host: str, port: int, timeout: float = 10.0) -> list[bytes]:
    """fetch_server_chain with the pq transport's groups, so it also reaches a `serve --require-pq` server."""
    from securecomm.net import pqcontext

    return pqcontext.fetch_server_chain(host, port, timeout)


def tls_summary(transport: str, require_pq: bool = False) -> str:
    """What `serve` logs about its key exchange."""
    if transport != "pq":
        return f"Python's ssl ({ssl.OPENSSL_VERSION}), key exchange {GROUPS} only: NOT post-quantum"
    from OpenSSL import SSL

    from securecomm.net import pqcontext

    groups = pqcontext.PQ_GROUPS if require_pq else pqcontext.GROUPS
    library = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    return f"pyOpenSSL ({library}), key exchange {groups}" + (" (post-quantum required)" if require_pq else "")


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3, X25519, the chain in `cert` (plus `ca` if `cert` holds the leaf alone)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _restrict_groups(ctx)
    try:
        _load_chain(ctx, cert, key, ca)
    except FileNotFoundError as e:
        from securecomm.errors import NotFoundError

        raise NotFoundError(f"{e.filename} does not exist", hint="create it with: securecomm certgen") from e
    except ssl.SSLError as e:
        raise TLSError(f"cannot load certificate {cert} with key {key}: {e.reason or e}") from e
    return ctx


def reload_chain(ctx: ssl.SSLContext, cert: Path, key: Path, ca: Path | None) -> None:
    """Load a new chain and key into a live server context (SIGHUP): later handshakes use them."""
    _load_chain(ctx, cert, key, ca)


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, ca: Path | None) -> None:
    """Load the certificate chain, completing a leaf-only file (from older certgen) with its CA.

    Clients pin the CA, so the server must present it. ssl loads chains only
    from files, so the completed chain goes through a private temporary file.
    """
    import tempfile

    data = cert.read_bytes()  # a missing file raises as load_cert_chain would: server_context explains
    if data.count(b"-----BEGIN CERTIFICATE-----") != 1 or ca is None or not ca.exists():
        ctx.load_cert_chain(cert, key)
        return
    ca_pem = read_file(ca)
    leaf, top = certs.load_cert(data, cert), certs.load_cert(ca_pem, ca)
    if not certs.issued_by(leaf, top) or certs.issued_by(leaf, leaf):
        ctx.load_cert_chain(cert, key)
        return
    with tempfile.TemporaryDirectory() as folder:
        chain = Path(folder) / "chain.pem"
        chain.write_bytes(data.rstrip(b"\n") + b"\n" + ca_pem)
        ctx.load_cert_chain(chain, key)


_CONTEXTS: dict[tuple[bytes, bool], ssl.SSLContext] = {}


def client_context(anchor_pem: bytes, *, pinned: bool = False) -> ssl.SSLContext:
    """Verify the chain and hostname against the CA `anchor_pem`.

    Contexts are cached per anchor: building one costs ~0.7 ms, more than a
    key login's own work, and a chat that reconnects or a load test opens many.
    """
    key = (anchor_pem, pinned)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = _new_client_context(anchor_pem, pinned)
    return _CONTEXTS[key]


def _new_client_context(anchor_pem: bytes, pinned: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _restrict_groups(ctx)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    try:
        ctx.load_verify_locations(cadata=anchor_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise TLSError("the trusted certificate is not a valid PEM certificate") from e
    if pinned:
        # A pinned CA is trusted because the user pinned it, even if it is an
        # intermediate (not self-signed); OpenSSL needs this flag for that.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def der_fingerprint(der: bytes) -> str:
    """SHA-256 over a whole certificate: only to read legacy pins (status shows spki_fingerprint)."""
    return format_fingerprint(sha256(der))


def spki_fingerprint(der: bytes) -> str:
    """The fingerprint clients pin (see the module docstring)."""
    return certs.fingerprint(_load_der(der))


def pem_fingerprint(pem: bytes) -> str:
    return spki_fingerprint(pem_to_der(pem))


def pem_to_der(pem: bytes) -> bytes:
    try:
        return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError("not a PEM certificate") from e


def _load_der(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise FormatError("not a DER certificate") from e


def pin_matches(pin: str, der: bytes) -> bool:
    """Whether `pin` names this certificate: its SPKI fingerprint, or (as older
    versions printed) the SHA-256 of the whole certificate."""
    return fingerprints_equal(pin, spki_fingerprint(der)) or fingerprints_equal(pin, der_fingerprint(der))


def issued_by(child_der: bytes, ca_der: bytes) -> bool:
    return certs.issued_by(_load_der(child_der), _load_der(ca_der))


def fingerprints_equal(a: str, b: str) -> bool:
    return same(a.strip().rstrip("=").encode(), b.strip().rstrip("=").encode())


def fetch_server_chain(host: str, port: int, timeout: float = 10.0) -> list[bytes]:
    """The chain the server presents (DER, leaf first), read WITHOUT trusting it. See the module docstring.

    Used only to show the CA fingerprint to the user (or compare with --pin);
    the socket is closed right after the handshake and carries no application data.
    """
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.minimum_version = ssl.TLSVersion.TLSv1_3
    _restrict_groups(probe)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # inspection only: never used to send or receive data
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                probe.wrap_socket(raw, server_hostname=host) as tls:
            chain = _presented_chain(tls)
    except (OSError, ssl.SSLError) as e:
        from securecomm.errors import NetworkError

        raise NetworkError(f"cannot reach {host}:{port}: {e}") from e
    if not chain:
        raise TLSError(f"{host}:{port} presented no certificate")
    return chain


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """SSL_get_peer_cert_chain: public as SSLSocket.get_unverified_chain() from
    Python 3.13; 3.10 to 3.12 have the same C method on the socket's _sslobj."""
    sslobj = getattr(tls, "_sslobj", None)
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        raise TLSError("this Python cannot read a server's certificate chain before trusting it",
                       hint="pass --ca FILE with the server's CA certificate")
    return [pem_to_der(c.public_bytes().encode("ascii")) for c in getter() or []]


def presented_ca(chain: list[bytes]) -> bytes:
    """The CA (DER) at the top of a presented chain; see certs.chain_anchor."""
    top = certs.chain_anchor([_load_der(d) for d in chain])
    from cryptography.hazmat.primitives.serialization import Encoding

    return top.public_bytes(Encoding.DER)


# -- known_servers ----------------------------------------------------------------
@dataclass(frozen=True)
class KnownServer:
    address: str  # host:port
    fingerprint: str
    cert_pem: bytes

    @property
    def der(self) -> bytes:
        return pem_to_der(self.cert_pem)

    @property
    def legacy(self) -> bool:
        """A line from an older version: the server's own certificate, not its CA."""
        return not fingerprints_equal(self.fingerprint, spki_fingerprint(self.der))


class KnownServers:
    """`host:port SHA256:fp base64(DER of the CA)` per line, like OpenSSH's known_hosts.

    fp is the CA's SPKI fingerprint. A line whose fp is the SHA-256 of the
    whole certificate is a legacy leaf pin, kept until it is migrated.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> list[KnownServer]:
        if not self.path.exists():
            return []
        entries = []
        for line in read_file(self.path).decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) != 3 or line.startswith("#"):
                continue
            try:
                der = base64.b64decode(parts[2], validate=True)
                if not pin_matches(parts[1], der):
                    continue  # a corrupted line is ignored, never trusted
            except (ValueError, FormatError):
                continue
            entries.append(KnownServer(parts[0], parts[1], ssl.DER_cert_to_PEM_cert(der).encode()))
        return entries

    def get(self, address: str) -> KnownServer | None:
        return next((e for e in self._read() if e.address == address), None)

    def add(self, address: str, der: bytes) -> KnownServer:
        """Remember the CA `der` for `address` (replacing any older line for it)."""
        entries = [e for e in self._read() if e.address != address]
        fp = spki_fingerprint(der)
        lines = [f"{e.address} {e.fingerprint} {_b64_der(e.cert_pem)}" for e in entries]
        lines.append(f"{address} {fp} {base64.b64encode(der).decode()}")
        write_files([(self.path, ("\n".join(lines) + "\n").encode(), PRIVATE_MODE)], force=True)
        return KnownServer(address, fp, ssl.DER_cert_to_PEM_cert(der).encode())


def _b64_der(pem: bytes) -> str:
    return base64.b64encode(ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))).decode()
