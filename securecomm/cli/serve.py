"""`securecomm serve`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from securecomm.cli.context import State, pass_state
from securecomm.cli.duration import DURATION
from securecomm.cli.serveconfig import ConfigCommand, config_option, print_config_option
from securecomm.errors import SecurecommError

if TYPE_CHECKING:
    from securecomm.net.bus import Bus


#: --lock-minutes at most: a year.
LOCK_MINUTES_MAX = 525_600


def server_config(*, rate: float, lock_minutes: float, **fields: Any) -> Any:
    """The ServerConfig of serve's options, checked (UsageError for a value serve would refuse). `fields`:
    the options named exactly as their ServerConfig fields (address, timeouts, pre-login, session, room
    and mailbox limits)."""
    import math

    from securecomm.errors import UsageError
    from securecomm.server.config import ServerConfig

    # a year at most: inf and nan had turned the lockout off without a word, 1e308 was an internal error
    # (the attacker's check, stop 26)
    # and 0 or a whole second at least: 1e-320 locked for 0 seconds, no lockout without a word (the re-check)
    if not (math.isfinite(lock_minutes) and (lock_minutes == 0 or 1 / 60 <= lock_minutes <= LOCK_MINUTES_MAX)):
        raise UsageError(f"--lock-minutes must be 0 (no lockout) or a number from {1 / 60:.4f} (a second) to "
                         f"{LOCK_MINUTES_MAX}, not {lock_minutes!r}")
    config = ServerConfig(rate=rate, burst=max(1, int(rate)) if math.isfinite(rate) else 1,
                          lock_seconds=int(lock_minutes * 60), **fields)
    config.validate()
    return config


def _check_printed(params: dict[str, Any]) -> None:
    """`--print-config` refuses what `serve` would refuse (attacker's check: it printed --idle-timeout nan and
    --max-frame 0 without a word, and serve then refused them)."""
    import dataclasses

    from securecomm.server.config import ServerConfig

    names = ({f.name for f in dataclasses.fields(ServerConfig)} | {"lock_minutes"}) - {"burst", "lock_seconds"}
    server_config(**{k: v for k, v in params.items() if k in names})


@click.command(cls=ConfigCommand,
               epilog="Example: securecomm serve --port 0   # any free port; the real one is printed\n\n"
                      "  securecomm serve --config /etc/securecomm/securecomm.toml --print-config")
@config_option
@print_config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=7443, show_default=True, help="Port (0: any free).")
@click.option("--db", metavar="FILE|URL", type=click.Path(dir_okay=False),
              help="SQLite database [data dir], or postgresql://USER@HOST/DB shared by several relays "
                   "(created by `securecomm db migrate`).")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="Server certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="Server certificate key (PEM).")
@click.option("--max-clients", type=click.IntRange(1), default=1000, show_default=True,
              help="Logged-in clients at most; more are refused clearly.")
@click.option("--max-unauthenticated", type=click.IntRange(1), default=512, show_default=True,
              help="Connections not logged in yet, at most; more are dropped at once.")
@click.option("--max-unauthenticated-per-address", type=click.IntRange(1), default=32, show_default=True,
              help="Connections not logged in yet from one address (IPv6: one /64).")
@click.option("--max-sessions-per-user", type=click.IntRange(1), default=16, show_default=True,
              help="Logged-in sessions of one account at once; more are refused at login (a device's login "
              "first replaces a session of the same device quiet for 90 s).")
@click.option("--max-room-members", type=click.IntRange(1), default=500, show_default=True,
              help="Members of one room; more joins are refused (lowered to fit --max-frame).")
@click.option("--mailbox-messages", type=click.IntRange(1), default=10_000, show_default=True,
              help="Direct messages that may wait for one recipient; more are refused.")
@click.option("--mailbox-bytes", type=click.IntRange(1), default=64 * 1024 * 1024, show_default=True,
              help="Bytes of direct messages that may wait for one recipient.")
@click.option("--mailbox-ttl", type=DURATION, default="30d", show_default=True,
              help="How long a direct message may wait unread (30d, 12h, 90m, 45s; 0: for ever); then it is "
                   "dropped and its sender, if connected, told it expired.")
@click.option("--send-messages", type=click.IntRange(1), default=100_000, show_default=True,
              help="Messages to the server one user may have stored (kept for good); more are refused.")
@click.option("--send-bytes", type=click.IntRange(1), default=256 * 1024 * 1024, show_default=True,
              help="Bytes of messages to the server one user may have stored.")
@click.option("--file-quota", type=click.IntRange(1), default=1 << 30, show_default=True,
              help="Bytes of files (ciphertext) that may wait for one recipient; larger offers are refused.")
@click.option("--file-sender-quota", type=click.IntRange(1), default=2 << 30, show_default=True,
              help="Bytes of files (ciphertext, complete or not) one sender may have stored for all recipients.")
@click.option("--max-file", type=click.IntRange(1), default=4 << 30, show_default=True,
              help="Largest file (ciphertext bytes) one upload may offer.")
@click.option("--file-days", type=click.FloatRange(0, min_open=True), default=7.0, show_default=True,
              help="Days an unfetched (or unfinished) file is kept before it is deleted.")
@click.option("--file-wait", type=float, default=20.0, show_default=True,
              help="Seconds a download of a file still being uploaded waits for its next bytes before the "
              "recipient is told to fetch again later (at most 25: clients wait 30 s for a frame).")
@click.option("--max-frame", type=int, default=1024 * 1024, show_default=True, help="Largest frame in bytes.")
@click.option("--rate", type=float, default=5000, show_default=True,
              help="Messages per second per connection (0: unlimited).")
@click.option("--relay-rate", type=click.FloatRange(0), default=512 * 1024, show_default=True,
              help="Bytes per second one user may relay to others (room and direct messages; burst: "
              "--max-frame; 0: unlimited).")
@click.option("--idle-timeout", type=float, default=300, show_default=True,
              help="Seconds before an idle client is cut.")
@click.option("--handshake-timeout", type=float, default=10, show_default=True,
              help="Seconds a client has to finish the TLS handshake.")
@click.option("--login-timeout", type=float, default=5, show_default=True,
              help="Seconds from the TLS handshake to a completed login.")
@click.option("--frame-timeout", type=float, default=10, show_default=True,
              help="Seconds a started frame has to arrive in full (slow-loris guard).")
@click.option("--lock-after", type=click.IntRange(1), default=5, show_default=True,
              help="Wrong passwords within --lock-minutes that lock PASSWORD logins for a name (key logins are "
                   "never locked).")
@click.option("--lock-minutes", type=click.FloatRange(0), default=15, show_default=True,
              help="How long password logins stay locked (0: never locked; at most a year); failures while "
                   "locked do not extend it.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines on stderr: text, or one JSON object per line; each names a stable `event`.")
@click.option("--metrics", "metrics_at", metavar="HOST:PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (a bare PORT: loopback) [off].")
@click.option("--tls", "transport", type=click.Choice(["pq", "stdlib"]), default="pq", show_default=True,
              help="TLS library: pq (pyOpenSSL, X25519MLKEM768 first, classical groups kept) or stdlib "
                   "(Python's ssl, X25519 only, not post-quantum).")
@click.option("--require-pq", is_flag=True,
              help="Refuse clients that cannot do the post-quantum key exchange (X25519MLKEM768); needs --tls pq.")
@click.option("--bus", metavar="nats://HOST:PORT",
              help="NATS server joining this relay to the others of one deployment (default: in-process).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Relay processes sharing the port (SO_REUSEPORT); more than 1 needs --db postgresql://... "
              "and --bus.")
@pass_state
def serve(state: State, log_format: str, metrics_at: str | None, host: str, port: int, db: str | None,
          cert: Path | None, key: Path | None,
          max_clients: int, max_frame: int, rate: float, idle_timeout: float, handshake_timeout: float,
          login_timeout: float, frame_timeout: float, lock_after: int, lock_minutes: float, transport: str,
          require_pq: bool, bus: str | None, workers: int, **limits: int) -> None:
    """Run the TLS 1.3 message server until SIGINT or SIGTERM.

    On a first run with no certificate or server identity it creates them
    (as certgen and keygen would) and logs the CA fingerprint, so that
    `securecomm serve` alone works on a fresh machine.
    """
    import asyncio
    import logging
    import signal

    from securecomm.server.listener import Server, run_server
    from securecomm.server.logs import configure
    from securecomm.server.setup import prepare_server

    configure(log_format, state.verbose - state.quiet)
    config = server_config(host=host, port=port, max_clients=max_clients, max_frame=max_frame, rate=rate,
                           idle_timeout=idle_timeout, handshake_timeout=handshake_timeout, login_timeout=login_timeout,
                           frame_timeout=frame_timeout, lock_after=lock_after, lock_minutes=lock_minutes, **limits)
    if require_pq and transport != "pq":
        from securecomm.errors import UsageError

        raise UsageError("--require-pq needs --tls pq", hint="Python's ssl here has no post-quantum key exchange")
    if workers > 1 and metrics_at is not None:
        from securecomm.errors import UsageError

        raise UsageError("--metrics serves one process: it cannot be used with --workers",
                         hint="run one relay per port with its own --metrics, or drop --workers")
    metrics = start_metrics(metrics_at)  # a taken port fails here, before a first run creates anything
    relay_bus = make_bus(bus)
    from securecomm.server.workers import check_workers, fork_workers
    from securecomm.store.backends import describe, is_url

    url = db if db is not None and is_url(db) else None
    check_workers(workers, url, bus)
    from securecomm.store.backends import require_cluster

    if url:  # before a first run creates anything
        require_cluster("a PostgreSQL --db", "psycopg")
    if bus:
        require_cluster("--bus", "nats")
    ssl_ctx, identity, db_file = prepare_server(state.paths, cert=cert, key=key,
                                                db=None if url or db is None else Path(db), transport=transport,
                                                require_pq=require_pq)
    new_database = url is None and not db_file.exists()
    db_path: str | Path = url or db_file
    if workers > 1:  # from here on, in each of the N worker processes (the parent only supervises)
        config.port, config.reuse_port = fork_workers(workers, host, port), True

    def listening(address: tuple[str, int]) -> None:
        if new_database:  # a wrong --home would otherwise serve an empty database without a word
            logging.getLogger("securecomm.server").info("created a new database at %s", db_path)
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        logging.getLogger("securecomm.server").info("store: %s; bus: %s", describe(db_path), relay_bus.describe())
        if log_format == "json":  # every stderr line one JSON object, this one too
            logging.getLogger("securecomm.server").info("listening on %s:%d", shown, address[1])
        else:
            click.echo(f"listening on {shown}:{address[1]}", err=True)

    async def main() -> None:
        from securecomm.server.certreload import CertificateFiles, on_sighup

        server = Server(config, ssl_ctx, identity, db_path, files_dir=db_file.parent / "files", bus=relay_bus)
        # SIGHUP: renewal without dropping connections (certgen --force, then systemctl reload)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup, server,
                                                      CertificateFiles(state.paths, cert, key), require_pq)
        if metrics is not None:
            from securecomm.server.servermetrics import watch_server

            watch_server(metrics, server, db_file if url is None else None)
        await run_server(server, listening)

    from contextlib import nullcontext

    from securecomm.store.backup import serving

    try:  # PostgreSQL has its own backups (pg_dump): the restore lock is for a SQLite file
        with serving(db_file) if url is None else nullcontext():  # `restore` refuses a database while this is held
            asyncio.run(main())
    except OSError as e:
        error = listen_error(e, host, port)
        if error is None:
            raise
        raise error from e


def start_metrics(where: str | None) -> Any:
    """The server's Metrics, served over HTTP at `where` (HOST:PORT), or None when off."""
    if where is None:
        return None
    import logging

    from securecomm.server.metrics import Metrics, parse_metrics_address
    from securecomm.server.servermetrics import count_log_events

    host, port = parse_metrics_address(where)
    metrics = Metrics()
    try:
        endpoint = metrics.serve(host, port)
    except OSError as e:
        from securecomm.errors import NetworkError

        raise NetworkError(f"cannot serve --metrics on {where}: {e.strerror}",
                           hint="pick a free port, e.g. --metrics 127.0.0.1:9464") from e
    count_log_events(metrics)
    shown = f"[{endpoint.address[0]}]" if ":" in endpoint.address[0] else endpoint.address[0]
    logging.getLogger("securecomm.server").info("metrics on http://%s:%d/metrics", shown, endpoint.address[1])
    if exposed(endpoint.address[0]):  # the attacker's check, stop 26
        logging.getLogger("securecomm.server").warning(
            "metrics on %s are served to every host that reaches it, without authentication (counts of sessions, "
            "messages and files); keep --metrics on loopback unless a firewall stands in front", shown)
    return metrics


def exposed(address: str) -> bool:
    """Whether a listening address is reachable from other hosts (not loopback: 0.0.0.0 and :: are every
    interface)."""
    import ipaddress

    return not ipaddress.ip_address(address.split("%", 1)[0]).is_loopback


def listen_error(e: OSError, host: str, port: int) -> SecurecommError | None:
    """A failed bind as a network error with a way out; any other OSError stays what it is."""
    import errno

    from securecomm.errors import NetworkError

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return NetworkError(f"cannot listen on {where}: the address is already in use",
                            hint="another server is listening there; pick another port with --port (0: any free)")
    if e.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
        return NetworkError(f"cannot listen on {where}: {e.strerror}",
                            hint="check --host, or use --port above 1023 (0: any free)")
    return None


def make_bus(url: str | None) -> Bus:
    """In-process without --bus; NATS with it (checked now, connected when the relay starts)."""
    from securecomm.net.bus import LocalBus

    if url is None:
        return LocalBus()
    from securecomm.net.nats_bus import NatsBus

    return NatsBus(url)


serve.check_printed = _check_printed
