"""Server log lines: one event per line, text or JSON, each with a stable `event` name.

Theory of operation: the server logs with plain `log.info("%s logged in (%s)",
s.label(), how)`. The event name is looked up from the call's *template* (the
constant first argument, `record.msg`), so the name is stable while the prose may
be reworded; tests/test_logs.py fails when a template in the server has no name
here. A call may also pass `extra={"event": ...}` itself. The connection id and
user come from a `Label` among the arguments (what `Session.label()` returns).

What is never logged is decided where the call is written: no message bodies,
passwords, keys or tokens reach a log call at all (a test plants a password and
a body in a whole load test and greps the log for them). The formatter adds no
data of its own beyond the record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: Log template -> stable event name. Names are `area.what`, lowercase, and never change once released.
EVENTS: dict[str, str] = {
    # connections
    "%s dropped: not reading (%d bytes queued)": "conn.dropped.slow_reader",
    "%s closed: timeout (%s)": "conn.timeout",
    "%s disconnected": "conn.closed",
    "%s dropped: protocol error: %s": "conn.dropped.protocol_error",
    "%s dropped: not reading its answers": "conn.dropped.not_reading",
    "%s dropped: %s": "conn.dropped",
    "peer=%s dropped: %s": "conn.refused.admission",
    "%s refused: %d clients connected (the maximum)": "conn.refused.full",
    "peer=%s dropped: %d handshakes already in progress": "conn.refused.handshakes",
    "peer=%s dropped: TLS handshake failed: %s": "conn.tls_failed",
    "peer=%s connected (%d clients)": "conn.opened",
    "peer=%s connected, TLS group %s (%d clients)": "conn.opened",
    "TLS: %s": "tls.transport",
    "%s connection lost: %s": "conn.lost",
    "%s closed: %s": "conn.closed.store_unavailable",
    # the store (PostgreSQL with several relays)
    "store: %s": "store.opened",
    "store: %s; bus: %s": "store.opened",
    "metrics: a request from %s failed": "metrics.request_failed",
    # the bus (NATS with several relays)
    "bus: %s": "bus.log",
    "bus: cannot connect to %s: %s; retrying for %d s": "bus.connect_failed",
    "bus lost: %s unreachable; reconnecting every %.1f s (mail still flows from the store)": "bus.lost",
    "bus reconnected to %s; rereading the store for every connected user": "bus.reconnected",
    "bus queue full: %d bus items dropped so far (mail is still read from the store)": "bus.dropped",
    "bus %s on %s failed: %s": "bus.failed",
    "bus: malformed membership news for room %s ignored": "bus.malformed",
    "bus: a device_removed notice for %s, which is still listed, ignored": "bus.notice_not_confirmed",
    ("bus: %s is used without a user or token: any process that reaches it can wake relays, list fake room members "
     "and send frames toward users' sessions; give NATS credentials (README: Several relays)"): "bus.no_credentials",
    "bus: a frame of type %d for a user's sessions ignored (not one relays send)": "bus.unexpected_frame",
    "%s room key for an unknown user dropped": "room.key.dropped",
    "%s; next attempt in %g s": "store.reconnecting",
    "reconnected to the PostgreSQL database at %s": "store.reconnected",
    "%s; refusing what needs it until it is back": "store.unavailable",
    # logins and accounts
    "%s login refused: %s already has %d sessions (the maximum)": "login.refused.sessions",
    "%s replaces %s: the same device, quiet for %d s, at %s's session limit": "login.replaces_quiet",
    "%s replaces %s: one device held %d of %s's %d sessions": "login.replaces_hog",
    "%s password login for %s: account read, checking the password": "login.password.checking",
    "%s login refused: too many logins waiting": "login.refused.busy",
    "%s password login refused for %s: locked": "login.refused.locked",
    "%s login failed for %s: %s": "login.failed",
    "user=%s password reset: lock lifted": "account.unlocked",
    "%s registration refused: identity malformed": "register.refused.malformed",
    "%s registration refused: no valid proof of possession": "register.refused.proof",
    "%s registration held: the account has another key": "register.held",
    "%s registration refused: key registered to another account": "register.refused.taken",
    "%s key login failed for %s": "login.key.failed",
    "%s logged in (%s%s)": "login.ok",
    "%s login refused: %s while it was checked": "login.refused.changed",
    "%s refused user_list: not an admin": "request.refused.admin",
    # messages
    "%s message %d not delivered: larger than --max-frame once framed": "direct.undeliverable",
    "%s %s refused: %d bytes once relayed": "message.refused.too_large",
    "%s %s refused: over the relay rate": "message.refused.relay_rate",
    "%s message refused: %s": "message.refused",
    "%s message %s: %s": "message.refused",  # "rejected" (integrity) or "refused" (a rule)
    "%s message not stored: %s": "message.store_failed",
    "%s direct message %s: %s": "message.refused",
    "%s room message rejected: %s": "room.message.rejected",
    "%s dropped: unknown request %r": "conn.dropped.protocol_error",
    "%s device removed from its list: closing": "device.removed",
    "%s key login refused: a device removed from %s's list": "login.refused.device_removed",
    "%s dropped: %s from a device waiting to be paired": "conn.dropped.pending_device",
    "%s %s refused: a version-1 envelope in a version-2 session": "direct.refused.version_1",
    "%s room key refused: %s": "room_key.refused",
    "%s %s not served: %s": "device.unavailable",
    "%s dropped: HELLO listing only version 1, which is no longer served": "conn.dropped.version_1",
    "%s duplicate message %s: original receipt sent": "message.duplicate",
    "%s direct message refused: %s": "direct.refused",
    "%s rejected a direct message (failed verification)": "direct.rejected",
    "%s ACK ignored: no device key proven in this connection": "direct.ack_ignored",
    "%s join %s refused: %d members (the maximum)": "room.join_refused.full",
    "%s room key for an offline user dropped": "room.key_dropped",
    "%s %s answer larger than --max-frame": "request.answer_too_large",
    "%s internal error": "conn.internal_error",
    "forgetting old direct message ids failed: %s": "store.prune_failed",
    "account watch failed; retrying": "store.account_watch_failed",
    "mailbox expiry failed: %s": "mailbox.expiry_failed",
    "expired %d direct messages that waited longer than --mailbox-ttl": "mailbox.expired",
    # files (server/files.py): INFO lines name no file; debug lines a prefix of its id
    "deleted %d expired file(s)": "file.expired",
    "could not check the devices files wait for: %s": "file.fetchers_check_failed",
    "deleted %d file(s) whose remaining devices were removed": "file.deleted_devices_removed",
    "deleted %d file(s) uploaded by removed devices": "file.deleted_sender_removed",
    "deleted %d file(s) of removed accounts": "file.deleted_accounts_removed",
    "%s FILE_PUT refused: %s": "file.put_refused",
    "%s FILE_PUT failed: %s": "file.put_failed",
    "%s uploaded a file (%d bytes)": "file.uploaded",
    "%s file %s uploaded": "file.uploaded",
    "%s %s refused: %s": "file.request_refused",
    "%s %s failed: %s": "file.request_failed",
    "%s closed: %d file_gets at once": "file.gets_busy",
    "%s file_get internal error": "file.get_internal_error",
    "%s cancelled an upload": "file.cancelled",
    "%s file %s cancelled": "file.cancelled",
    "%s fetched a file: deleted": "file.fetched",
    "%s fetched a file: kept for the account's other devices": "file.fetched",
    "--max-frame %d is below %d: the answer to a prekey claim takes about 6 KiB per device of the recipient, so "
    "under about 8 KiB no direct message or file can be sent at all, and above it not to users with many "
    "devices (refused TOO_LARGE)": "server.small_max_frame",
    # lifecycle
    "shutting down: no new connections; finishing in-flight messages": "server.stopping",
    "stopped": "server.stopped",
    "created a new database at %s": "server.database_created",
    "listening on %s:%d": "server.listening",
    "metrics on http://%s:%d/metrics": "server.metrics_listening",
    ("metrics on %s are served to every host that reaches it, without authentication (counts of sessions, "
     "messages and files); keep --metrics on loopback unless a firewall stands in front"): "server.metrics_exposed",
    "first run: created a local CA and server certificate in %s": "server.certificate_created",
    "CA fingerprint %s (clients pin this: --pin %s)": "server.ca_fingerprint",
    "CA fingerprint %s": "server.ca_fingerprint",
    "first run: created the server identity %s (%s)": "server.identity_created",
    "server identity %s (%s + ed25519)": "server.identity",
    "another relay created the server identity %s first; using it": "server.identity_created_elsewhere",
    "certificate reloaded from %s: new connections get leaf %s, CA %s (the fingerprint clients pin)":
        "server.certificate_reloaded",
    "certificate reload failed, still serving the old one: %s": "server.certificate_reload_failed",
}


class Label(str):
    """A session's log label (`conn=7 peer=... user=alice`) that also carries its parts for JSON."""

    conn: int | None
    user: str | None
    peer: str | None

    def __new__(cls, conn: int | None, peer: str | None, user: str | None = None) -> Label:
        parts = [f"conn={conn}" if conn is not None else "", f"peer={peer}" if peer else "",
                 f"user={user}" if user else ""]
        self = super().__new__(cls, " ".join(p for p in parts if p))
        self.conn, self.peer, self.user = conn, peer, user
        return self


def event_name(record: logging.LogRecord) -> str:
    given = getattr(record, "event", None)
    if isinstance(given, str):
        return given
    return EVENTS.get(str(record.msg), record.name.rsplit(".", 1)[-1] + ".log")


def _label(record: logging.LogRecord) -> Label | None:
    args = record.args if isinstance(record.args, tuple) else ()
    return next((a for a in args if isinstance(a, Label)), None)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record as the JSON object one line holds."""
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "event": event_name(record),
    }
    label = _label(record)
    if label is not None:
        out.update({k: v for k, v in (("conn", label.conn), ("peer", label.peer), ("user", label.user))
                    if v is not None})
    for key in ("conn", "user", "count"):  # given with extra={...} by calls without a label
        value = getattr(record, key, None)
        if value is not None and key not in out:
            out[key] = value
    out["msg"] = record.getMessage()
    if record.exc_info and record.exc_info[0] is not None:
        out["exc"] = record.exc_info[0].__name__  # the type only: a traceback's locals are no log's business
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields(record), ensure_ascii=True, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`2026-01-31 12:00:00,123 INFO login.ok conn=7 peer=... user=alice logged in (key)`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging calls it by this name
        line = super().formatMessage(record)
        head, sep, rest = line.partition(f" {record.levelname} ")
        text = head + sep + event_name(record) + " " + rest
        return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


#: -q, default, -v: what an operator filters by.
LEVELS = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def configure(log_format: str, verbosity: int) -> None:
    """Log to stderr, one line per event; verbosity -2..1 from -qq .. -v."""
    import sys

    level = LEVELS[max(-2, min(1, verbosity))]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.setLevel(level)  # -q filters here, not at the logger: the metrics still count info events
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
