"""TLS contexts, certificate pinning and known_servers.

Server: TLS 1.3 only (Mozilla "modern"), the certificate from certgen.
Client: CERT_REQUIRED and hostname checking, always. What differs is the
trust anchor, chosen in this order:

1. `--ca FILE`                                  how = "ca" ("ca+pin" with --pin)
2. a server certificate in known_servers        how = "known_servers"  (a change is a hard failure)
3. the CA that certgen made in the same home    how = "ca"
4. a CA or server fingerprint from --pin        how = "pin"       (a server cert is saved to known_servers)
5. first contact, interactive: ask the user     how = "tofu"      (then saved to known_servers)

Cases 4 and 5 need the certificate before it is trusted. Python's ssl cannot
show an unverified certificate after a failed verification, so
`fetch_server_certificate` makes one handshake that does not verify,
reads the certificate, and closes without sending a byte of application data,
exactly as OpenSSH reads a host key before asking "are you sure?". Nothing
is trusted because of that handshake: the user's answer (or the --pin
fingerprint, compared in constant time) decides, and the real connection
then verifies the chain and the hostname against the saved certificate.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from securecomm.crypto.integrity import same
from securecomm.errors import FormatError, TLSError
from securecomm.files import PRIVATE_MODE, read_file, write_files


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        from securecomm.errors import NotFoundError

        raise NotFoundError(f"{e.filename} does not exist", hint="create it with: securecomm certgen") from e
    except ssl.SSLError as e:
        raise TLSError(f"cannot load certificate {cert} with key {key}: {e.reason or e}") from e
    return ctx


_CONTEXTS: dict[tuple[bytes, bool], ssl.SSLContext] = {}


def client_context(anchor_pem: bytes, *, leaf_anchor: bool = False) -> ssl.SSLContext:
    """Verify the chain and hostname against `anchor_pem` (a CA, or a pinned server cert).

    Contexts are cached per anchor: building one costs ~0.7 ms, more than a
    key login's own work, and a chat that reconnects or a load test opens many.
    """
    key = (anchor_pem, leaf_anchor)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = _new_client_context(anchor_pem, leaf_anchor)
    return _CONTEXTS[key]


def _new_client_context(anchor_pem: bytes, leaf_anchor: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    try:
        ctx.load_verify_locations(cadata=anchor_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise TLSError("the trusted certificate is not a valid PEM certificate") from e
    if leaf_anchor:
        # A pinned server certificate is its own trust anchor; OpenSSL needs
        # this flag to accept a non-CA certificate as the end of the chain.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def der_fingerprint(der: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def pem_fingerprint(pem: bytes) -> str:
    try:
        return der_fingerprint(ssl.PEM_cert_to_DER_cert(pem.decode("ascii")))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError("not a PEM certificate") from e


def fingerprints_equal(a: str, b: str) -> bool:
    return same(a.strip().rstrip("=").encode(), b.strip().rstrip("=").encode())


def fetch_server_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The server's certificate (DER), read WITHOUT trusting it. See the module docstring.

    Used only to show a fingerprint to the user (or compare with --pin); the
    socket is closed right after the handshake and carries no application data.
    """
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.minimum_version = ssl.TLSVersion.TLSv1_3
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # inspection only: never used to send or receive data
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                probe.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        from securecomm.errors import NetworkError

        raise NetworkError(f"cannot reach {host}:{port}: {e}") from e
    if not der:
        raise TLSError(f"{host}:{port} presented no certificate")
    return der


# -- known_servers ----------------------------------------------------------------
@dataclass(frozen=True)
class KnownServer:
    address: str  # host:port
    fingerprint: str
    cert_pem: bytes


class KnownServers:
    """`host:port SHA256:fp base64(DER)` per line, like OpenSSH's known_hosts."""

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
            except ValueError:
                continue
            if not fingerprints_equal(der_fingerprint(der), parts[1]):
                continue  # a corrupted line is ignored, never trusted
            entries.append(KnownServer(parts[0], parts[1], ssl.DER_cert_to_PEM_cert(der).encode()))
        return entries

    def get(self, address: str) -> KnownServer | None:
        return next((e for e in self._read() if e.address == address), None)

    def add(self, address: str, der: bytes) -> KnownServer:
        entries = [e for e in self._read() if e.address != address]
        fp = der_fingerprint(der)
        lines = [f"{e.address} {e.fingerprint} {_b64_der(e.cert_pem)}" for e in entries]
        lines.append(f"{address} {fp} {base64.b64encode(der).decode()}")
        write_files([(self.path, ("\n".join(lines) + "\n").encode(), PRIVATE_MODE)], force=True)
        return KnownServer(address, fp, ssl.DER_cert_to_PEM_cert(der).encode())


def _b64_der(pem: bytes) -> str:
    return base64.b64encode(ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))).decode()
