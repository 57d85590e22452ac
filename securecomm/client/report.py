"""The security report that `securecomm status` prints."""

from __future__ import annotations

from typing import Any

from securecomm.crypto.envelope import KEM_IDS
from securecomm.net import tls
from securecomm.net.pqtls import describe_group

_PQ_KEMS = {"mlkem768-x25519"}
#: What the certificate fingerprints in the report are (the label README explains).
FINGERPRINTS = "SHA-256 of the certificate's public key (SPKI), as certgen, serve's log and --pin show it"


def security_report(client: Any, profile: Any, identity: Any) -> dict[str, Any]:
    info = client.tls_info()
    server_id = client.server_identity
    group = info["group"]
    # The pq transport (net/pqtls.py) names the group; Python's ssl before 3.13 cannot.
    tls_pq, tls_note = describe_group(group)
    return {
        "server": f"{client.host}:{client.port}",
        "tls": {
            "version": info["version"],
            "cipher": info["cipher"],
            # Python < 3.13's ssl (a hand-built stdlib context) cannot name the group; it offers only one.
            "key_exchange": group or f"{tls.GROUPS} (the only group Python's ssl offers here)",
            "post_quantum": tls_pq,
            "note": tls_note,
            # One kind of fingerprint everywhere (certgen, serve's log, --pin, known_servers): SPKI.
            "server_certificate": tls.spki_fingerprint(client.peer_certificate()),
            "trust_anchor": client.trust.anchor_fingerprint,
            "fingerprints": FINGERPRINTS,
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
