"""What `serve` needs before it listens, created on a first run if missing."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from securecomm.crypto import identity as ident
from securecomm.crypto.certfiles import TLSFiles, issue_certificates
from securecomm.crypto.certs import fingerprint, load_cert
from securecomm.errors import NotFoundError
from securecomm.files import read_file
from securecomm.net.tls import server_context

log = logging.getLogger("securecomm.server")


def prepare_server(paths: Any, *, cert: Path | None = None, key: Path | None = None,
                   db: Path | None = None) -> tuple[ssl.SSLContext, ident.PrivateIdentity, Path]:
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
        if not (cert.exists() and key.exists()):
            result = issue_certificates(files)
            log.info("first run: created a local CA and server certificate in %s", files.ca_cert.parent)
            log.info("CA fingerprint %s (clients pin this: --pin %s)", result["ca_fingerprint"],
                     result["ca_fingerprint"])
        elif files.ca_cert.exists():
            log.info("CA fingerprint %s", fingerprint(load_cert(read_file(files.ca_cert))))
    from securecomm.files import check_private_mode

    check_private_mode(key)
    # A leaf-only cert file (older certgen) is completed with the CA beside it.
    ca = files.ca_cert if cert == files.server_cert else cert.parent / "ca.pem"
    ctx = server_context(cert, key, ca)
    if not paths.server_identity_key.exists():
        identity = ident.PrivateIdentity.generate()
        ident.save(identity, paths.server_identity_key, paths.server_identity_pub)
        log.info("first run: created the server identity %s (%s)", identity.public.fingerprint_text, identity.kem)
    else:
        identity = ident.load(paths.server_identity_key)
    log.info("server identity %s (%s + ed25519)", identity.public.fingerprint_text, identity.kem)
    return ctx, identity, db or paths.database
