"""What `serve` needs before it listens, created on a first run if missing."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from securecomm.crypto import identity as ident
from securecomm.crypto.certfiles import TLSFiles, issue_certificates
from securecomm.crypto.certs import fingerprint, load_cert
from securecomm.errors import NotFoundError
from securecomm.files import exclusive_lock, read_file
from securecomm.net.tls import pq_server_context, server_context, tls_summary

log = logging.getLogger("securecomm.server")

#: The lock file, beside what a first run creates, that makes relays starting together create it once.
FIRST_RUN_LOCK = ".first-run.lock"


def prepare_server(paths: Any, *, cert: Path | None = None, key: Path | None = None,
                   db: Path | None = None, transport: str = "pq",
                   require_pq: bool = False) -> tuple[ssl.SSLContext | SSL.Context, ident.PrivateIdentity, Path]:
    files = TLSFiles.from_paths(paths)
    if cert or key:
        if not (cert and key):
            from securecomm.errors import UsageError

            raise UsageError("--cert and --key go together")
        for p in (cert, key):
            if not p.exists():
                raise NotFoundError(f"{p} does not exist", hint="create them with: securecomm certgen --out DIR")
    else:
        cert, key = files.server_cert, files.server_key
        if not _first_run_certificates(files) and files.ca_cert.exists():
            log.info("CA fingerprint %s", fingerprint(load_cert(read_file(files.ca_cert))))
    from securecomm.files import check_private_mode

    check_private_mode(key)
    # A leaf-only cert file (older certgen) is completed with the CA beside it.
    ca = files.ca_cert if cert == files.server_cert else cert.parent / "ca.pem"
    ctx: ssl.SSLContext | SSL.Context
    if transport == "pq":
        ctx = pq_server_context(cert, key, ca, require_pq=require_pq)
    else:
        ctx = server_context(cert, key, ca)
    log.info("TLS: %s", tls_summary(transport, require_pq))
    identity = server_identity(paths)
    log.info("server identity %s (%s + ed25519)", identity.public.fingerprint_text, identity.kem)
    return ctx, identity, db or paths.database


def _first_run_certificates(files: TLSFiles) -> bool:
    """Create a CA and certificate if there is none; whether this process did (one of several relays
    starting at once on one fresh home: the others wait on the lock, then use these)."""
    if files.server_cert.exists() and files.server_key.exists():
        return False
    with exclusive_lock(files.server_cert.parent / FIRST_RUN_LOCK):
        if files.server_cert.exists() and files.server_key.exists():
            return False
        result = issue_certificates(files)
    log.info("first run: created a local CA and server certificate in %s", files.ca_cert.parent)
    log.info("CA fingerprint %s (clients pin this: --pin %s)", result["ca_fingerprint"], result["ca_fingerprint"])
    return True


def server_identity(paths: Any) -> ident.PrivateIdentity:
    """The server's message identity, created on a first run.

    Relays started together on one fresh --home (README "Several relays") must not each make their
    own: under a lock in the identity's folder the first creates it, and the others, once they have
    the lock, find it and load it. The files themselves are also created exclusively (files.py)."""
    key = paths.server_identity_key
    if key.exists():
        return ident.load(key)
    with exclusive_lock(paths.server_identity_dir / FIRST_RUN_LOCK):
        if key.exists():
            identity = ident.load(key)
            log.info("another relay created the server identity %s first; using it", identity.public.fingerprint_text)
            return identity
        identity = ident.PrivateIdentity.generate()
        ident.save(identity, key, paths.server_identity_pub)
        log.info("first run: created the server identity %s (%s)", identity.public.fingerprint_text, identity.kem)
        return identity
