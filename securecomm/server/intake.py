"""The pure checks of an incoming envelope, one function for SEND (to the server) and DIRECT alike.

Theory of operation
-------------------
An envelope is checked in a fixed order, cheapest and least revealing first:
parse (lengths only) -> recipient -> time window -> sender -> signature (and,
for SEND, which the server itself opens: decryption and the body digest).
The first failure is the answer: a `Refusal` with the wire error code and the
text the peer sees (an integrity failure only as the fixed opaque text, its
detail kept for the server log). No I/O here: no sqlite3, no asyncio, no clock (the caller
passes `now_ms`), so every refusal has a socket-free test (tests/test_intake.py).
Looking up the recipient account is the caller's (it needs the store).
"""

from __future__ import annotations

from dataclasses import dataclass

from securecomm.crypto import envelope
from securecomm.crypto.identity import PrivateIdentity, PublicIdentity
from securecomm.crypto.integrity import same, sha256
from securecomm.errors import IntegrityError
from securecomm.wire import protocol as P


@dataclass(frozen=True)
class Refusal:
    """Why an envelope is not accepted: the wire code, the text sent to the peer, and (for the log only)
    the detail behind an opaque INTEGRITY refusal."""

    code: P.ErrorCode
    message: str
    detail: str = ""


@dataclass(frozen=True)
class Rules:
    """What an envelope must satisfy. `recipient_name` None: sealed to the server itself (SEND)."""

    recipient: bytes
    window_ms: int
    recipient_name: str | None = None


@dataclass(frozen=True)
class Accepted:
    envelope: envelope.Envelope
    #: SHA-256 of the body (SEND, opened here) or of the whole envelope (DIRECT, sealed to someone else).
    digest: bytes


def parse(raw: bytes) -> envelope.Envelope | Refusal:
    """The envelope's fields, or a refusal naming what is malformed."""
    try:
        return envelope.parse(raw)
    except IntegrityError as e:
        return _rejected(e)


def check(env: envelope.Envelope, rules: Rules, sender: PublicIdentity | None, now_ms: int,
          opener: PrivateIdentity | None = None) -> Accepted | Refusal:
    """Every check on a parsed envelope; `opener` (the server's key) opens a SEND, None leaves it sealed."""
    refusal = _addressing(env.header, rules, sender, now_ms)
    if refusal is not None:
        return refusal
    assert sender is not None
    try:
        if opener is not None:
            return Accepted(env, envelope.open_envelope(env, opener, sender).digest)
        env.verify(sender)
    except IntegrityError as e:
        return _rejected(e)
    return Accepted(env, sha256(env.raw))


def _addressing(h: envelope.Header, rules: Rules, sender: PublicIdentity | None, now_ms: int) -> Refusal | None:
    """Recipient, time window and sender, in that order; the texts are those of PROTOCOL.md 5.5."""
    to_server = rules.recipient_name is None
    if not same(h.recipient, rules.recipient):
        return Refusal(P.ErrorCode.WRONG_RECIPIENT, "envelope is sealed for another recipient, not this server"
                       if to_server else f"envelope is not sealed to {rules.recipient_name}'s current key")
    if abs(now_ms - h.timestamp_ms) > rules.window_ms:
        return Refusal(P.ErrorCode.STALE, f"envelope timestamp is more than {rules.window_ms // 1000}s from the "
                       "server clock (stale, replayed, or a wrong clock)" if to_server
                       else "envelope timestamp is outside the server's window")
    if sender is None and to_server:
        return Refusal(P.ErrorCode.FORBIDDEN, "this session has not proved a key, so it cannot send: log in with the "
                       "device key (LOGIN_KEY; the CLI does: securecomm user login)")
    if sender is None or not same(h.sender, sender.fingerprint):
        return Refusal(P.ErrorCode.FORBIDDEN, "envelope is not signed by the identity of the logged-in user")
    return None


def _rejected(e: IntegrityError) -> Refusal:
    """Opaque to the peer (which check failed is not told), detailed for the server log."""
    return Refusal(P.ErrorCode.INTEGRITY, P.OPAQUE_TEXTS[P.ErrorCode.INTEGRITY], e.message)
