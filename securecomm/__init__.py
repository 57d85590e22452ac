"""securecomm: a small secure messaging service.

TLS 1.3 carries every connection; inside it each message is sealed again with
HPKE (RFC 9180) to its recipient and signed with the sender's Ed25519 key.
"""

from __future__ import annotations

__version__ = "0.1.0"
