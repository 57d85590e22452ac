"""Where securecomm keeps its files: the only module that knows.

With `--home DIR` (or `SECURECOMM_HOME`) every path lives under DIR, which is
how tests and multi-identity setups stay isolated. Otherwise configuration
(identities, client profile, known servers, contacts) goes to the platform's
user config dir, and server state (TLS material, server identity, database)
to the user data dir, as platformdirs defines them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pathlib costs ~5 ms of start-up; --help never needs it
    from pathlib import Path

APP_NAME = "securecomm"
HOME_ENV = "SECURECOMM_HOME"


def check_identity_name(name: str) -> str:
    """An identity name, refused unless it is a plain file name inside the identities folder.

    Every identity path is built here, so `--name ../x` or `--identity /abs/path`
    cannot read or write outside the home folder, whichever command passes it.
    """
    import re

    if not re.fullmatch(r"[a-z0-9_.-]{1,32}", name) or name.startswith("."):
        from securecomm.errors import UsageError

        raise UsageError(f"identity name {name!r} must be 1-32 characters of a-z 0-9 _ . - (not starting with .)",
                         hint="identities live in the identities folder; `securecomm paths` shows where")
    return name


class Paths:
    """All file locations for one securecomm home."""

    # A plain class, not a dataclass: dataclasses import inspect, which
    # `securecomm --help` would pay for on every start.
    __slots__ = ("config_dir", "data_dir")

    def __init__(self, config_dir: Path, data_dir: Path) -> None:
        self.config_dir = config_dir
        self.data_dir = data_dir

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Paths) and (self.config_dir, self.data_dir) == (other.config_dir, other.data_dir)

    def __hash__(self) -> int:
        return hash((self.config_dir, self.data_dir))

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Paths:
        from pathlib import Path

        home = home or os.environ.get(HOME_ENV) or None
        if home:
            root = Path(home).expanduser().absolute()
            return cls(config_dir=root, data_dir=root)
        import platformdirs

        return cls(
            config_dir=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            data_dir=Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
        )

    # -- client side ---------------------------------------------------------
    @property
    def identities_dir(self) -> Path:
        return self.config_dir / "identities"

    def identity_key(self, name: str) -> Path:
        return self.identities_dir / f"{check_identity_name(name)}.key"

    def identity_pub(self, name: str) -> Path:
        return self.identities_dir / f"{check_identity_name(name)}.pub"

    @property
    def devices_dir(self) -> Path:
        return self.config_dir / "devices"

    def device_keys(self, name: str) -> Path:
        """A device's user key copy and private prekeys (docs/PROTOCOL.md 6.5), per identity."""
        return self.devices_dir / check_identity_name(name)

    @property
    def seen_ids(self) -> Path:
        """Ids of direct messages already shown (client/messenger.py drops redeliveries)."""
        return self.config_dir / "seen_ids"

    @property
    def writer_devices(self) -> Path:
        """Ids of devices seen writing their account into a message (client/messenger.py: an SCM2 body from
        one is refused); beside seen_ids, in the config folder a logged-in client has."""
        return self.config_dir / "writer_devices"

    @property
    def messages_dir(self) -> Path:
        """Messages too long to show on a terminal, kept whole (client/files.py save_long_message)."""
        return self.data_dir / "messages"

    @property
    def received_dir(self) -> Path:
        """File notices `inbox` showed, for `fetch ID` (client/files.py notices_dir)."""
        return self.data_dir / "received"

    @property
    def outgoing_dir(self) -> Path:
        """A file read from a pipe by `send --file`, sealed before its upload (client/files.py)."""
        return self.data_dir / "outgoing"

    @property
    def profile(self) -> Path:
        return self.config_dir / "profile.json"

    @property
    def known_servers(self) -> Path:
        return self.config_dir / "known_servers"

    @property
    def contacts(self) -> Path:
        return self.config_dir / "contacts.json"

    @property
    def user_pins(self) -> Path:
        """Contacts' pinned user keys, list counters and safety-number checks (docs/PROTOCOL.md 6.8)."""
        return self.config_dir / "user_keys.json"

    # -- server side ---------------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.tls_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.tls_dir / "server.key"

    @property
    def server_identity_dir(self) -> Path:
        return self.data_dir / "server"

    @property
    def server_identity_key(self) -> Path:
        return self.server_identity_dir / "identity.key"

    @property
    def server_identity_pub(self) -> Path:
        return self.server_identity_dir / "identity.pub"

    @property
    def database(self) -> Path:
        return self.data_dir / "securecomm.db"

    @property
    def server_files_dir(self) -> Path:
        """The server's ciphertext of files waiting to be fetched, beside the database (serve)."""
        return self.data_dir / "files"

    def table(self) -> dict[str, Path]:
        """Every location, for `securecomm paths`."""
        return {
            "config dir": self.config_dir,
            "data dir": self.data_dir,
            "identities": self.identities_dir,
            "client profile": self.profile,
            "known servers": self.known_servers,
            "contacts": self.contacts,
            "user keys": self.user_pins,
            "device keys": self.devices_dir,
            "seen message ids": self.seen_ids,
            "devices naming their writer": self.writer_devices,
            "kept long messages": self.messages_dir,
            "received files": self.received_dir,
            "outgoing files": self.outgoing_dir,
            "CA certificate": self.ca_cert,
            "CA key": self.ca_key,
            "server certificate": self.server_cert,
            "server key": self.server_key,
            "server identity": self.server_identity_key,
            "server identity public": self.server_identity_pub,
            "database": self.database,
            "database lock": self.database.with_name(self.database.name + ".lock"),
            "server files": self.server_files_dir,
        }
