"""SIGHUP: reload the server certificate and key from disk without dropping a connection.

OpenSSL gives each new connection the certificate its SSL_CTX holds at accept
time, and a connection keeps the one it was made with. So a reload loads the
new chain into the *same* context the listener uses: connections accepted
afterwards present the new certificate, open ones carry on untouched. The new
files are first loaded into a throwaway context, so that a half-written or
mismatched pair is refused whole and the server keeps serving the old one
(loading straight into the live context could leave a new certificate beside
the old key).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from securecomm.crypto.certfiles import TLSFiles
from securecomm.errors import SecurecommError

log = logging.getLogger("securecomm.server")


class CertificateFiles:
    """Where `serve` reads its chain and key, as prepare_server decides it."""

    def __init__(self, paths: Any, cert: Path | None, key: Path | None) -> None:
        files = TLSFiles.from_paths(paths)
        self.cert = cert or files.server_cert
        self.key = key or files.server_key
        # A leaf-only cert file (older certgen) is completed with the CA beside it.
        self.ca = files.ca_cert if self.cert == files.server_cert else self.cert.parent / "ca.pem"


def reload_certificate(server: Any, where: CertificateFiles, require_pq: bool = False) -> tuple[str, str]:
    """Load the files for the connections accepted from now on; returns the SPKI fingerprints of the
    new leaf and of its CA (the CA's is the one `status`, `certgen` and `--pin` call "fingerprint").

    Raises, changing nothing, if the pair does not load. Python's ssl context is
    reloaded in place (after a check on a throwaway one); a pyOpenSSL context
    (the post-quantum transport) is replaced whole on `server.ssl_ctx`, which each
    handshake reads when it starts: open connections keep the context they were made with.
    """
    from securecomm.crypto.certs import fingerprint, load_cert
    from securecomm.files import check_private_mode
    from securecomm.net import tls

    check_private_mode(where.key)
    if isinstance(server.ssl_ctx, ssl.SSLContext):
        tls.server_context(where.cert, where.key, where.ca)  # the whole pair, checked on a throwaway context
        tls.reload_chain(server.ssl_ctx, where.cert, where.key, where.ca)
    else:
        from securecomm.net import pqcontext

        server.ssl_ctx = pqcontext.server_context(where.cert, where.key, where.ca, require_pq=require_pq)
    leaf = fingerprint(load_cert(where.cert.read_bytes(), where.cert))
    return leaf, (tls.pem_fingerprint(where.ca.read_bytes()) if where.ca.exists() else "-")


def on_sighup(server: Any, where: CertificateFiles, require_pq: bool = False, counted: Any = None) -> None:
    """The SIGHUP handler: reload, and log what happened either way (never raising into the loop)."""
    try:
        leaf, ca = reload_certificate(server, where, require_pq)
    except (SecurecommError, OSError, ssl.SSLError, ValueError) as e:
        log.error("certificate reload failed, still serving the old one: %s", _why(e))
        if counted is not None:
            counted("failed")
        return
    log.info("certificate reloaded from %s: new connections get leaf %s, CA %s (the fingerprint clients pin)",
             where.cert, leaf, ca)
    if counted is not None:
        counted("ok")


def _why(e: BaseException) -> str:
    if isinstance(e, SecurecommError):
        return e.message
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
