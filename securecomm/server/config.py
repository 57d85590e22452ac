"""The relay's settings (`securecomm serve` options); every limit's comment says why that number."""

from __future__ import annotations

from dataclasses import dataclass, field

from securecomm.errors import UsageError
from securecomm.server.versions import SERVE_VERSION_1
from securecomm.store.quota import MAILBOX_BYTES, MAILBOX_MESSAGES, SEND_BYTES, SEND_MESSAGES
from securecomm.wire.frames import MAX_FRAME_SIZE, MIN_FRAME_SIZE


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7443
    #: Logged-in clients; connections that have not logged in are not counted here.
    max_clients: int = 1000
    #: Connections still in their TLS handshake; beyond this new ones are dropped
    #: at once, so half-open connections cannot exhaust file descriptors.
    max_handshakes: int = 512
    #: Connections not logged in yet (handshaking or before LOGIN_OK), in total and
    #: from one address; beyond these new ones are dropped at once (issue 9). Each
    #: costs ~60 KiB (TLS buffers), so 512 of them stay near 30 MiB. The per-address
    #: default is a sixteenth of the total, so that filling it takes 16 addresses,
    #: while a NAT still has 32 logins in progress at once (a login takes well
    #: under a second); tests and benchmarks that crowd one address say so.
    max_unauthenticated: int = 512
    max_unauthenticated_per_address: int = 32
    #: Logged-in sessions of one account: a chat, an inbox --follow and a few sends
    #: at once need well under this, and one account can no longer take every
    #: --max-clients slot, nor hold more than 16 x MAX_OUTBOUND_BUFFER of memory.
    max_sessions_per_user: int = 16
    #: Members of one room. The join and `who` RESULT lists every member with its
    #: identity line (up to ~1.8 KB with ML-KEM), so 500 fit the default 1 MiB
    #: frame; with a smaller --max-frame the limit is lowered to what fits
    #: (room_member_limit()).
    max_room_members: int = 500
    max_frame: int = MAX_FRAME_SIZE
    handshake_timeout: float = 10.0
    #: From the end of the TLS handshake to LOGIN_OK. Clients ask for passwords
    #: before they connect, so a login takes well under a second; 5 s also
    #: covers a full Argon2id queue (64 waiting, 2 at a time, ~20 ms each).
    login_timeout: float = 5.0
    #: A frame that has started must be complete within this time (slow-loris guard).
    frame_timeout: float = 10.0
    idle_timeout: float = 300.0
    #: Per-connection rate limit on messages after login (token bucket).
    rate: float = 5000.0
    burst: int = 5000
    #: Bytes per second one USER (all its sessions) may have relayed to others: ROOM_SEND payloads
    #: (counted once, whatever the fan-out) and DIRECT envelopes; burst: max_frame, so one message of
    #: any size that fits still passes. One member must not be able to get another cut off: a reader
    #: that stalls for 3 s under one sender is then sent at most 1 MiB + 3 x 512 KiB = 2.5 MiB, under
    #: MAX_OUTBOUND_BUFFER (4 MiB), where 12 x 900 KB in 0.1 s cut it off before. 0: unlimited.
    relay_rate: float = 512 * 1024
    #: Envelopes whose timestamp is further than this from the server clock are refused.
    stale_window_ms: int = 5 * 60 * 1000
    #: Receipts a connection may have outstanding before the server stops reading it.
    max_in_flight: int = 4096
    lock_after: int = 5
    lock_seconds: int = 15 * 60
    #: Direct messages and envelope bytes that may wait for one recipient (issue 10;
    #: see store/quota.py for why these numbers).
    mailbox_messages: int = MAILBOX_MESSAGES
    mailbox_bytes: int = MAILBOX_BYTES
    #: Messages to the server (SEND) and their envelope bytes that one user may have stored; they
    #: are never deleted, so without these one connection could fill the disk (store/quota.py).
    send_messages: int = SEND_MESSAGES
    send_bytes: int = SEND_BYTES
    #: Seconds a direct message may wait unread before it is dropped and its sender told (EXPIRED,
    #: PROTOCOL.md 4.2); 0: never. Undelivered mail otherwise waited for ever.
    mailbox_ttl: float = 30 * 86400
    #: Files through the server (PROTOCOL.md 4.4): ciphertext bytes waiting for one recipient, the
    #: largest file, and how long an unfetched file is kept.
    file_quota: int = 1 << 30
    file_sender_quota: int = 2 << 30
    max_file: int = 4 << 30
    file_days: float = 7.0
    #: Seconds a download of a file still being uploaded (cut-through) waits for the uploader's next bytes
    #: before it is told `file-upload-stalled` (under the clients' 30 s stall timeout, so they hear why).
    file_wait: float = 20.0
    #: SO_REUSEPORT on the listening socket: `serve --workers N` runs N relays on one port.
    reuse_port: bool = field(default=False, init=False)
    #: Argon2id hashes running at once (each takes 19 MiB and ~20 ms of a core).
    #: Serve protocol version 1 beside 2 (securecomm/server/versions.py): off; set on the config object
    #: (`config.serve_version_1 = True`) only by tests and benchmarks that need a version-1 baseline
    #: (benchmarks/direct_v2.py). No command-line option, so not a constructor argument either.
    serve_version_1: bool = field(default=SERVE_VERSION_1, init=False)
    hash_workers: int = 2
    #: Logins waiting for a hash slot; beyond this a login is told the server is busy.
    max_hash_queue: int = 64

    def validate(self) -> None:
        self._check_durations()
        if not MIN_FRAME_SIZE <= self.max_frame <= 64 * 1024 * 1024:
            raise UsageError(f"--max-frame must be between {MIN_FRAME_SIZE} and {64 * 1024 * 1024}")
        if self.relay_rate < 0:
            raise UsageError("--relay-rate must be at least 0 (0: unlimited)")
        if self.max_clients < 1:
            raise UsageError("--max-clients must be at least 1")
        if self.mailbox_messages < 1 or self.mailbox_bytes < 1:
            raise UsageError("--mailbox-messages and --mailbox-bytes must be at least 1")
        if self.send_messages < 1 or self.send_bytes < 1:
            raise UsageError("--send-messages and --send-bytes must be at least 1")
        if self.max_unauthenticated < 1 or self.max_unauthenticated_per_address < 1:
            raise UsageError("--max-unauthenticated and --max-unauthenticated-per-address must be at least 1")
        if self.mailbox_ttl < 0:
            raise UsageError("--mailbox-ttl must be at least 0 (0: never)")
        if self.max_sessions_per_user < 1 or self.max_room_members < 1:
            raise UsageError("--max-sessions-per-user and --max-room-members must be at least 1")

    def _check_durations(self) -> None:
        """Seconds and rates the event loop and the stores compute with: finite, and in a range that
        works (an attacker's check: --file-days 1e308 crashed every file_offer, --handshake-timeout -1
        let no client log in, --rate nan was an internal error, --idle-timeout inf was taken)."""
        import math

        year = 365 * 86400.0
        for flag, value, low, high in (
            ("--handshake-timeout", self.handshake_timeout, 0.1, 3600.0),
            ("--login-timeout", self.login_timeout, 0.1, 3600.0),
            ("--frame-timeout", self.frame_timeout, 0.1, 3600.0),
            ("--idle-timeout", self.idle_timeout, 1.0, 30 * 86400.0),
            ("--rate", self.rate, 0.0, 1e9),
            ("--relay-rate", self.relay_rate, 0.0, 1e12),
            ("--mailbox-ttl", self.mailbox_ttl, 0.0, 100 * year),
            ("--file-days", self.file_days, 1 / 1440, 36500.0),
            # under the 30 s a client waits for a frame (PROTOCOL 4.4): above it, a fetch of a stalled upload
            # gave up as "the server stopped answering" before the server said the upload had stalled
            ("--file-wait", self.file_wait, 0.1, 25.0),
        ):
            if not (math.isfinite(value) and low <= value <= high):
                raise UsageError(f"{flag} must be a number from {low:g} to {high:g}, not {value!r}")

    def room_member_limit(self) -> int:
        """--max-room-members, lowered so that a RESULT listing every member always fits max_frame."""
        return max(1, min(self.max_room_members, (self.max_frame - RESULT_OVERHEAD) // MEMBER_ENTRY_MAX))


#: JSON bytes of one member in a join / `who` RESULT at most: {"user": 32
#: characters, "identity": the longest identity line (1,695 characters for
#: ML-KEM-768 + X25519)}, rounded up for separators and longer future keys.
MEMBER_ENTRY_MAX = 2048
#: The rest of such a RESULT: type byte, rid, room name and JSON punctuation.
RESULT_OVERHEAD = 256
