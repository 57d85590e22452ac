"""The client profile: which server, as whom, trusted how.

Saved by `securecomm user login` (0600, JSON) and read by send/status/chat so
that they log in with the identity key instead of the password.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from securecomm.errors import FormatError, NotFoundError
from securecomm.files import PRIVATE_MODE, read_file, write_files

DEFAULT_PORT = 7443


@dataclass
class Profile:
    server: str
    user: str
    identity: str = "default"
    ca: str | None = None
    pin: str | None = None
    server_identity: str | None = None  # the server's public identity line, pinned at login

    @classmethod
    def load(cls, path: Path) -> Profile:
        if not path.exists():
            raise NotFoundError(f"not logged in: no client profile at {path}",
                                hint="run: securecomm [--home DIR] user login NAME --server HOST:PORT "
                                     "(with the same --home as this command)")
        try:
            data = json.loads(read_file(path))
            return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError) as e:
            raise FormatError(f"{path} is not a valid profile") from e

    @classmethod
    def load_optional(cls, path: Path) -> Profile | None:
        return cls.load(path) if path.exists() else None

    def save(self, path: Path) -> None:
        write_files([(path, (json.dumps(asdict(self), indent=1) + "\n").encode(), PRIVATE_MODE)], force=True)


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or `v6` -> (host, port)."""
    from securecomm.errors import UsageError

    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise UsageError(f"bad server address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad server address {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not host:
        raise UsageError(f"bad server address {text!r}")
    return host, port


def parse_servers(text: str) -> list[tuple[str, int]]:
    """`a:7443,b:7443`: the relays of one deployment, tried in this order (one address is a list of one)."""
    from securecomm.errors import UsageError

    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise UsageError(f"bad server list {text[:200]!r}", hint="list relays as HOST:PORT,HOST:PORT")
    return [parse_address(part) for part in parts]


def format_servers(text: str) -> str:
    """The canonical spelling of a server list, as saved in a profile."""
    return ",".join(format_address(*address) for address in parse_servers(text))


def _port(p: str, text: str) -> int:
    from securecomm.errors import UsageError

    if not p.isdigit() or not 0 < int(p) < 65536:
        raise UsageError(f"bad port in server address {text!r}")
    return int(p)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
