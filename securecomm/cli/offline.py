"""`securecomm encrypt` / `decrypt` (not implemented yet)."""

from __future__ import annotations

from securecomm.cli.client import _stub

encrypt = _stub("encrypt")
decrypt = _stub("decrypt")
