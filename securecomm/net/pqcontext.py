"""pyOpenSSL contexts for the post-quantum TLS transport (net/pqtls.py).

The same rules as the stdlib contexts in net/tls.py: TLS 1.3 only, the full
chain from certgen on the server, and on the client a verified chain to one
trusted CA plus the hostname check, always. What changes is the key
exchange: GROUPS puts the hybrid X25519MLKEM768 first and keeps three
classical groups for peers without it. ALPN names the protocol.

pyOpenSSL 26.4 has no public call for two things, so each goes through
cryptography's OpenSSL binding (the one pyOpenSSL itself is built on), in one
function apiece, each covered by a test that fails loudly if the binding
changes (tests/test_pqtls.py::test_binding_*):
- `set_groups`: SSL_CTX_set1_curves_list (pyOpenSSL plans `Context.set_groups`);
- `expect_hostname`: X509_VERIFY_PARAM_set1_host / set1_ip, the check Python's
  ssl makes with check_hostname (OpenSSL matches the name, not our code).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto

from securecomm.crypto import certs
from securecomm.errors import TLSError

log = logging.getLogger("securecomm.tls")

#: Key-exchange groups, preferred first, for server and client alike. The
#: hybrid ML-KEM-768 + X25519 protects recorded traffic against a future
#: quantum computer; X25519, P-256 and P-384 (Mozilla "modern") let classical
#: peers such as system `openssl s_client` or Python's ssl connect. Nothing
#: else: X448, P-521 and the ffdhe groups cost far more CPU per handshake (one
#: ffdhe8192 ClientHello cost the server ~95 ms) and no client needs them.
GROUPS = "X25519MLKEM768:X25519:P-256:P-384"
#: `serve --require-pq`: a client that cannot do the hybrid exchange is refused.
PQ_GROUPS = "X25519MLKEM768"
#: Used only if the binding for a group list is gone: one classical curve
#: pyOpenSSL can set publicly, still far narrower than OpenSSL's defaults.
FALLBACK_CURVE = "P-256"
#: Groups that protect the key exchange against a quantum computer.
PQ_GROUP_NAMES = frozenset({"X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "MLKEM768", "MLKEM1024"})
#: ALPN: both ends speak the securecomm wire protocol, nothing else (a TLS
#: connection meant for another protocol on the same certificate is refused).
ALPN = b"securecomm/1"


def set_groups(ctx: SSL.Context, groups: str = GROUPS) -> str:
    """Restrict `ctx` to `groups`; returns the list actually in force.

    pyOpenSSL 26.4 has no public method for a group list (its future
    `Context.set_groups` will be one): SSL_CTX_set1_curves_list comes from
    cryptography's binding and needs pyOpenSSL's private `_context` pointer.
    If either disappears, the context keeps one classical curve set through
    the public API rather than OpenSSL's default list (which adds X448, P-521
    and ffdhe2048..8192), and the server log says so.
    """
    from cryptography.hazmat.bindings.openssl.binding import Binding

    setter = getattr(Binding.lib, "SSL_CTX_set1_curves_list", None)
    raw = getattr(ctx, "_context", None)
    if setter is not None and raw is not None and setter(raw, groups.encode("ascii")) == 1:
        return groups
    if groups == PQ_GROUPS:  # --require-pq: a classical fallback would silently drop the requirement
        raise TLSError("this pyOpenSSL cannot restrict the key exchange to X25519MLKEM768, so --require-pq "
                       "cannot be honoured")
    log.warning("pyOpenSSL cannot set a TLS group list here; key exchange restricted to %s, NOT post-quantum",
                FALLBACK_CURVE)
    from cryptography.hazmat.primitives.asymmetric import ec

    ctx.set_tmp_ecdh(ec.SECP256R1())
    return FALLBACK_CURVE


def expect_hostname(conn: SSL.Connection, host: str) -> None:
    """Make OpenSSL check that the server's certificate names `host` (a DNS name or an IP address).

    The binding counterpart of ssl's check_hostname (pyOpenSSL has no public
    call). There is no fallback: without it the client refuses to connect.
    """
    from cryptography.hazmat.bindings.openssl.binding import Binding

    lib, ffi = Binding.lib, Binding.ffi
    raw = getattr(conn, "_ssl", None)
    if raw is None or not hasattr(lib, "SSL_get0_param"):
        raise TLSError("this pyOpenSSL cannot check the server's hostname; refusing to connect")
    param = lib.SSL_get0_param(raw)
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        lib.X509_VERIFY_PARAM_set_hostflags(param, lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        ok = lib.X509_VERIFY_PARAM_set1_host(param, host.encode("idna"), 0)
    else:
        ok = lib.X509_VERIFY_PARAM_set1_ip(param, ffi.from_buffer(packed), len(packed))
    if ok != 1:
        raise TLSError(f"cannot check the server's name {host!r}")
    if not _is_ip(host):  # SNI carries DNS names only (RFC 6066 3)
        conn.set_tlsext_host_name(host.encode("idna"))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls13_only(ctx: SSL.Context) -> None:
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    # An idle connection then holds no 16 KiB+ read and write buffers (issue 9's memory figure).
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)


def server_context(cert: Path, key: Path, ca: Path | None = None, *, require_pq: bool = False) -> SSL.Context:
    """TLS 1.3, GROUPS (or only PQ_GROUPS), ALPN securecomm/1, the chain in `cert` (plus `ca` if it holds the leaf)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    _tls13_only(ctx)
    set_groups(ctx, PQ_GROUPS if require_pq else GROUPS)
    ctx.set_alpn_select_callback(_select_alpn)
    try:
        _load_chain(ctx, cert, key, ca)
    except FileNotFoundError as e:
        from securecomm.errors import NotFoundError

        raise NotFoundError(f"{e.filename} does not exist", hint="create it with: securecomm certgen") from e
    except (SSL.Error, crypto.Error, ValueError) as e:
        raise TLSError(f"cannot load certificate {cert} with key {key}") from e
    return ctx


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    """Choose securecomm/1; a client that offers ALPN without it means another protocol: refuse it."""
    if ALPN in offered:
        return ALPN
    raise TLSError("the client asked for another application protocol")  # pyOpenSSL aborts the handshake


def _load_chain(ctx: SSL.Context, cert: Path, key: Path, ca: Path | None) -> None:
    """The leaf, then its CA: the file's own chain, or `ca` when the file holds the leaf alone (older certgen)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = cert.read_bytes()
    chain = x509.load_pem_x509_certificates(data)
    if len(chain) == 1 and ca is not None and ca.exists():
        top = certs.load_cert(ca.read_bytes(), ca)
        if certs.issued_by(chain[0], top) and not certs.issued_by(chain[0], chain[0]):
            chain.append(top)
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    private = load_pem_private_key(key.read_bytes(), password=None)
    ctx.use_privatekey(private)  # type: ignore[arg-type]
    ctx.check_privatekey()


def client_context(anchor_pem: bytes, *, pinned: bool = False, groups: str = GROUPS) -> SSL.Context:
    """Verify the chain against the CA(s) in `anchor_pem`; each connection adds the hostname check."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    _tls13_only(ctx)
    set_groups(ctx, groups)
    ctx.set_alpn_protos([ALPN])
    ctx.set_verify(SSL.VERIFY_PEER, _record_verify_failure)
    store = ctx.get_cert_store()
    assert store is not None
    try:
        anchors = x509.load_pem_x509_certificates(anchor_pem)
    except ValueError as e:
        raise TLSError("the trusted certificate is not a valid PEM certificate") from e
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    if pinned:
        # As in tls.py: a pinned CA is trusted because the user pinned it, even an intermediate.
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    return ctx


def _record_verify_failure(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    """OpenSSL's own verdict stands; a failure's reason is kept for the error message (pqtls.CertificateError)."""
    if not ok:
        notes = conn.get_app_data()
        if isinstance(notes, dict) and "verify" not in notes:
            notes["verify"] = _verify_message(errnum)
    return bool(ok)


def _verify_message(errnum: int) -> str:
    from cryptography.hazmat.bindings.openssl.binding import Binding

    text = getattr(Binding.lib, "X509_verify_cert_error_string", None)
    if text is None:
        return f"verification error {errnum}"
    return str(Binding.ffi.string(text(errnum)).decode("ascii", "replace"))


def fetch_server_chain(host: str, port: int, timeout: float = 10.0) -> list[bytes]:
    """The chain the server presents (DER, leaf first), read WITHOUT trusting it (see net/tls.py's docstring).

    The pyOpenSSL counterpart of tls.fetch_server_chain, with the same groups
    as the real connection (so a `serve --require-pq` server answers it too).
    The socket is closed right after the handshake and carries no application data.
    """
    import socket
    import struct

    from cryptography.hazmat.primitives.serialization import Encoding

    from securecomm.errors import NetworkError

    probe = SSL.Context(SSL.TLS_CLIENT_METHOD)
    _tls13_only(probe)
    set_groups(probe)
    probe.set_alpn_protos([ALPN])
    probe.set_verify(SSL.VERIFY_NONE)  # inspection only: never used to send or receive data
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            # OpenSSL needs a blocking socket (a Python timeout makes it non-blocking): the kernel times out instead.
            raw.settimeout(None)
            limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            conn = SSL.Connection(probe, raw)
            if not _is_ip(host):
                conn.set_tlsext_host_name(host.encode("idna"))
            conn.set_connect_state()
            conn.do_handshake()
            chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    except (OSError, SSL.Error) as e:
        raise NetworkError(f"cannot reach {host}:{port}: {reason(e) if isinstance(e, SSL.Error) else e}") from e
    if not chain:
        raise TLSError(f"{host}:{port} presented no certificate")
    return [c.public_bytes(Encoding.DER) for c in chain]


def reason(e: BaseException) -> str:
    """OpenSSL's reason for an SSL.Error, written as Python's ssl writes it ("[SSL: NO_SUITABLE_KEY_SHARE] no
    suitable key share"), so a log line reads the same on either transport."""
    errors = e.args[0] if e.args and isinstance(e.args[0], list) else []
    reasons = [f"[SSL: {err[2].upper().replace(' ', '_')}] {err[2]}" for err in errors
               if isinstance(err, tuple) and len(err) == 3 and isinstance(err[2], str) and err[2]]
    return "; ".join(reasons) or type(e).__name__
