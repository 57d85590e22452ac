"""The security report that `securecomm status` prints."""

from __future__ import annotations

import ssl
from typing import Any

from securecomm.crypto.envelope import KEM_IDS
from securecomm.net import tls

_PQ_KEMS = {"mlkem768-x25519"}
_PQ_TLS_GROUPS = {"X25519MLKEM768", "SecP256r1MLKEM768", "MLKEM768", "MLKEM1024", "X25519Kyber768Draft00"}


def security_report(client: Any, profile: Any, identity: Any) -> dict[str, Any]:
    info = client.tls_info()
    server_id = client.server_identity
    group = info["group"]
    if group:
        tls_pq = group in _PQ_TLS_GROUPS
        tls_note = f"key exchange {group}"
    else:
        # Python < 3.13 does not expose the negotiated group. OpenSSL before 3.5
        # has no ML-KEM groups at all, so the exchange there is classical.
        tls_pq = False
        tls_note = (f"{ssl.OPENSSL_VERSION} offers no ML-KEM key exchange; TLS is NOT post-quantum"
                    if ssl.OPENSSL_VERSION_INFO < (3, 5) else
                    "negotiated group not visible to Python's ssl; assume TLS is NOT post-quantum")
    return {
        "server": f"{client.host}:{client.port}",
        "tls": {
            "version": info["version"],
            "cipher": info["cipher"],
            # Python < 3.13 cannot name the group, but the client offers only one.
            "key_exchange": group or f"{tls.GROUPS} (the only group this client offers)",
            "post_quantum": tls_pq,
            "note": tls_note,
            "server_certificate": tls.der_fingerprint(client.peer_certificate()),
            "trust_anchor": client.trust.anchor_fingerprint,
            "trusted_by": client.trust.how,
        },
        "messages": {
            "hpke_suite": f"{server_id.kem} (0x{KEM_IDS[server_id.kem]:04x}), HKDF-SHA256, ChaCha20-Poly1305",
            "post_quantum": server_id.kem in _PQ_KEMS,
            "signature": "Ed25519",
            "server_identity": server_id.fingerprint_text,
        },
        "user": {
            "name": client.login.user if client.login else None,
            "role": client.login.role if client.login else None,
            "login": "identity key (signed challenge)",
            "identity": identity.public.fingerprint_text,
            "identity_kem": identity.kem,
        },
        "summary": ("both layers post-quantum" if tls_pq and server_id.kem in _PQ_KEMS else
                    "messages are post-quantum protected (HPKE " + server_id.kem + "); TLS is not"
                    if server_id.kem in _PQ_KEMS else "neither layer is post-quantum"),
    }


async def relay_info(client: Any) -> dict[str, str]:
    """Which store and bus the relay uses (`relay_info`, PROTOCOL.md 5.4); asked last, because a server
    that predates it ends the connection with a fatal UNKNOWN_TYPE."""
    from securecomm.errors import SecurecommError

    try:
        data = await client.request("relay_info")
    except SecurecommError:
        return {"store": "not reported (an older server)", "bus": "not reported (an older server)"}
    if not isinstance(data, dict):
        return {"store": "not reported (a malformed answer)", "bus": "not reported (a malformed answer)"}
    return {key: str(data.get(key, "not reported"))[:64] for key in ("store", "bus")}
