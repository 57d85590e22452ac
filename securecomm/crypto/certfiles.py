"""Where a CA and a server certificate live on disk, and making them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securecomm.crypto import certs
from securecomm.errors import ExistsError, FilePermissionError, UsageError
from securecomm.files import PRIVATE_MODE, PUBLIC_MODE, ensure_dir, read_file, read_private, write_files
from securecomm.paths import Paths


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_paths(cls, paths: Paths) -> TLSFiles:
        return cls(paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)

    @classmethod
    def in_dir(cls, folder: Path) -> TLSFiles:
        folder = folder.expanduser().absolute()
        return cls(folder / "ca.pem", folder / "ca.key", folder / "server.pem", folder / "server.key")

    def complete(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.server_cert, self.server_key))


def _check_writable(folder: Path) -> None:
    import os

    ensure_dir(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FilePermissionError(f"cannot write to {folder}: permission denied")


def issue_certificates(files: TLSFiles, *, hosts: tuple[str, ...] = (), days: int = certs.DEFAULT_SERVER_DAYS,
                       new_ca: bool = False, force: bool = False) -> dict[str, Any]:
    """Create or reuse the CA, issue a server certificate, write all at once."""
    if not 1 <= days <= certs.MAX_SERVER_DAYS:
        raise UsageError(f"--days must be between 1 and {certs.MAX_SERVER_DAYS}, not {days}")
    all_hosts = certs.server_hosts(hosts)  # validates --host before anything is written
    if not force:
        for path in (files.server_cert, files.server_key) + ((files.ca_cert, files.ca_key) if new_ca else ()):
            if path.exists():
                raise ExistsError(f"{path} already exists",
                                  hint="use --force to replace it (the old file is kept as .bak)")
    for folder in {files.ca_cert.parent, files.server_cert.parent}:
        _check_writable(folder)
    reuse = files.ca_cert.exists() and files.ca_key.exists() and not new_ca
    if reuse:
        ca = certs.load_ca(read_file(files.ca_cert), read_private(files.ca_key), files.ca_cert)
    else:
        ca = certs.make_ca()
    server = certs.make_server(ca, all_hosts, days)
    # server.pem is the full chain, leaf then CA: the server sends both, so a
    # client on first contact can see (and pin) the CA rather than a 90-day leaf.
    chain = server.cert_pem + ca.cert_pem
    items = [(files.server_cert, chain, PUBLIC_MODE), (files.server_key, server.key_pem, PRIVATE_MODE)]
    if not reuse:
        items = [(files.ca_cert, ca.cert_pem, PUBLIC_MODE), (files.ca_key, ca.key_pem, PRIVATE_MODE), *items]
    write_files(items, force=True)  # existence was checked above, before any work
    return {
        "ca_cert": str(files.ca_cert),
        "ca_key": str(files.ca_key),
        "server_cert": str(files.server_cert),
        "server_key": str(files.server_key),
        "ca_fingerprint": certs.fingerprint(ca.cert),
        "server_fingerprint": certs.fingerprint(server.cert),
        "hosts": all_hosts,
        "not_after": server.cert.not_valid_after_utc.isoformat(),
        "ca_reused": reuse,
    }
