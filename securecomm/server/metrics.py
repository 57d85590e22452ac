"""The server's Prometheus metrics (`serve --metrics HOST:PORT`).

Each server owns its registry (not prometheus_client's global one), so that
several servers in one process (tests, benchmarks) count apart. Every label
value is one of a fixed set written in the code (a reason, a method, a
result): never a user name, message id or address, so that neither the
metrics' size nor what they reveal grows with the users.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Commit batch sizes (messages per transaction), up to storage.MAX_BATCH.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Commit latency in seconds: a durable COMMIT is ~0.2 ms on an SSD, seconds on a sick disk.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters, gauges and histograms of one server; cheap to update whether or not anyone scrapes."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connections_open = Gauge("securecomm_connections_open", "TLS connections open now", registry=r)
        self.connections_refused = Counter("securecomm_connections_refused", "Connections refused or dropped "
                                           "before login, by reason", ["reason"], registry=r)
        self.logins = Counter("securecomm_logins", "Login attempts by method (password, key) and result",
                              ["method", "result"], registry=r)
        self.messages_received = Counter("securecomm_messages_received", "SEND, DIRECT and ROOM_SEND frames "
                                          "received after login, by kind", ["kind"], registry=r)
        self.messages_refused = Counter("securecomm_messages_refused", "Messages refused, by reason",
                                        ["reason"], registry=r)
        self.messages_receipted = Counter("securecomm_messages_receipted", "Messages stored durably and "
                                          "receipted to their sender", registry=r)
        self.messages_delivered = Counter("securecomm_messages_delivered", "Direct messages acknowledged by "
                                          "their recipient (and so deleted)", registry=r)
        self.messages_expired = Counter("securecomm_messages_expired", "Direct messages dropped unread after "
                                        "--mailbox-ttl", registry=r)
        self.mailbox_depth = Gauge("securecomm_mailbox_depth", "Direct messages waiting in all mailboxes",
                                   registry=r)
        self.commit_batch = Histogram("securecomm_commit_batch_size", "Messages per durable commit",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.commit_latency = Histogram("securecomm_commit_latency_seconds", "Time of one durable commit",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.hash_pool_queue = Gauge("securecomm_hash_pool_queue", "Password checks waiting for the hash pool",
                                     registry=r)
        self.slow_reader_bytes = Gauge("securecomm_slow_reader_bytes", "Bytes queued to clients that read "
                                       "slower than they are sent to", registry=r)
        self.reloads = Counter("securecomm_certificate_reloads", "Certificate reloads on SIGHUP, by result",
                               ["result"], registry=r)

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Have `gauge` read its value at scrape time (e.g. a queue's length)."""
        gauge.set_function(read)

    def serve(self, host: str, port: int) -> HttpEndpoint:
        """Serve the text format on http://HOST:PORT/metrics from a daemon thread (see BoundedHTTPServer)."""
        from prometheus_client.exposition import MetricsHandler

        handler = type("Handler", (MetricsHandler.factory(self.registry),),
                       {"timeout": METRICS_TIMEOUT, "log_message": lambda self, *args: None})
        server = _bounded_server(host, port, handler)
        thread = threading.Thread(target=server.serve_forever, name="securecomm-metrics", daemon=True)
        thread.start()
        return HttpEndpoint(server, thread)

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


#: Seconds a metrics connection may take to send its request and read the answer; a scrape takes
#: milliseconds. prometheus_client's own server waits for ever, one thread per connection: 300
#: half-sent requests held 300 threads, and 1,000 idle ones took every file descriptor the relay had.
METRICS_TIMEOUT = 5.0
#: Metrics connections served at once; more are closed at once (a scraper retries; the relay's own
#: file descriptors are never at a stranger's mercy through this port).
METRICS_CONNECTIONS = 8


def _bounded_server(host: str, port: int, handler: type) -> Any:
    import socket
    from http.server import ThreadingHTTPServer

    class BoundedHTTPServer(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def __init__(self) -> None:
            self.slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)
            super().__init__((host, port), handler)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

        def handle_error(self, request: Any, client_address: Any) -> None:
            # a scraper that went away or timed out: one line, never a traceback on stderr
            logging.getLogger("securecomm.server").info("metrics: a request from %s failed", client_address[0])

    return BoundedHTTPServer()


class HttpEndpoint:
    """The running metrics HTTP server: where it listens, and how to stop it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def parse_metrics_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `PORT` (loopback); `[v6]:PORT` for IPv6. Port 0: any free one."""
    from securecomm.config import parse_address
    from securecomm.errors import UsageError

    if text.isdigit():
        text = f"127.0.0.1:{text}"
    if text.endswith(":0"):  # parse_address refuses port 0, which is how tests ask for any free port
        host, _ = parse_address(text[:-2] + ":1")
        return host, 0
    host, port = parse_address(text, default_port=-1)
    if port < 0:
        raise UsageError(f"--metrics {text!r} needs a port: HOST:PORT")
    return host, port


#: Log events that are counted, and how: (metric attribute, label values). The log line is the one
#: place these outcomes are already named (securecomm.server.logs.EVENTS), so the count and the line
#: cannot disagree; label values come from this table only.
EVENT_COUNTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "conn.refused.admission": ("connections_refused", ("unauthenticated_limit",)),
    "conn.refused.handshakes": ("connections_refused", ("handshakes",)),
    "conn.tls_failed": ("connections_refused", ("tls_handshake",)),
    "conn.refused.full": ("connections_refused", ("max_clients",)),
    "login.failed": ("logins", ("password", "failed")),
    "login.key.failed": ("logins", ("key", "failed")),
    "login.refused.locked": ("logins", ("password", "locked")),
    "login.refused.busy": ("logins", ("password", "busy")),
    "login.refused.sessions": ("logins", ("any", "too_many_sessions")),
    "login.refused.changed": ("logins", ("any", "account_changed")),
    "server.certificate_reloaded": ("reloads", ("ok",)),
    "server.certificate_reload_failed": ("reloads", ("failed",)),
}


class MetricsHandler(logging.Handler):
    """Counts the server's log events into `metrics` (see EVENT_COUNTS); never formats a line."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.DEBUG)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        from securecomm.server.logs import event_name

        event = event_name(record)
        if event == "login.ok":
            how = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else ""
            self.metrics.logins.labels("password" if how == "password" else "key", "ok").inc()
        elif event == "mailbox.expired":
            self.metrics.messages_expired.inc(int(getattr(record, "count", 0) or 0))
        elif event in EVENT_COUNTS:
            attribute, labels = EVENT_COUNTS[event]
            getattr(self.metrics, attribute).labels(*labels).inc()
