"""The metrics registry and its HTTP endpoint on their own (the server's use: tests/test_metrics.py)."""

from __future__ import annotations

import urllib.request

import pytest

from securecomm.errors import UsageError
from securecomm.server.metrics import Metrics, parse_metrics_address


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (a loopback URL built here)
        assert r.status == 200
        return r.read().decode()


def test_counters_move_and_are_served_over_http():
    m = Metrics()
    endpoint = m.serve("127.0.0.1", 0)
    try:
        host, port = endpoint.address
        assert host == "127.0.0.1" and port > 0
        before = scrape(f"http://127.0.0.1:{port}/metrics")
        assert 'securecomm_logins_total{method="key",result="ok"}' not in before
        m.logins.labels("key", "ok").inc()
        m.commit_batch.observe(3)
        after = scrape(f"http://127.0.0.1:{port}/metrics")
        assert 'securecomm_logins_total{method="key",result="ok"} 1.0' in after
        assert "securecomm_commit_batch_size_count 1.0" in after
    finally:
        endpoint.close()


def test_two_servers_count_apart():
    a, b = Metrics(), Metrics()
    a.messages_receipted.inc()
    assert "securecomm_messages_receipted_total 1.0" in a.text()
    assert "securecomm_messages_receipted_total 0.0" in b.text()


@pytest.mark.parametrize(("text", "expected"), [
    ("9100", ("127.0.0.1", 9100)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9100", ("::1", 9100)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
])
def test_metrics_addresses(text, expected):
    assert parse_metrics_address(text) == expected


def test_a_metrics_address_without_port_is_refused():
    with pytest.raises(UsageError):
        parse_metrics_address("localhost")


def test_log_events_are_counted_with_fixed_labels_only():
    import logging

    from securecomm.server.logs import Label
    from securecomm.server.metrics import MetricsHandler

    m = Metrics()
    logger = logging.getLogger("securecomm.test.metrics")
    logger.propagate, logger.level = False, logging.DEBUG
    handler = MetricsHandler(m)
    logger.addHandler(handler)
    try:
        label = Label(1, "127.0.0.1:1", "alice")
        logger.info("%s logged in (%s%s)", label, "password", "")
        logger.info("%s logged in (%s%s)", label, "identity key", "")
        logger.warning("%s login failed for %s: %s", label, "alice", "wrong password")
        logger.info("peer=%s dropped: TLS handshake failed: %s", "127.0.0.1:2", "bad")
        logger.info("expired %d direct messages that waited longer than --mailbox-ttl", 3, extra={"count": 3})
    finally:
        logger.removeHandler(handler)
    text = m.text()
    assert 'securecomm_logins_total{method="password",result="ok"} 1.0' in text
    assert 'securecomm_logins_total{method="key",result="ok"} 1.0' in text
    assert 'securecomm_logins_total{method="password",result="failed"} 1.0' in text
    assert 'securecomm_connections_refused_total{reason="tls_handshake"} 1.0' in text
    assert "securecomm_messages_expired_total 3.0" in text
    assert "alice" not in text and "127.0.0.1" not in text
