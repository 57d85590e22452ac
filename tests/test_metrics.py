"""`serve --metrics HOST:PORT`: a real server scraped over HTTP while real clients use it."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request

import pytest

from tests.serverproc import ServerProc, login, sc, tls_socket, users_logged_in


def scrape(srv: ServerProc) -> dict[str, float]:
    url = srv.wait_log(r"metrics on http://127\.0\.0\.1:\d+/metrics").split(" on ", 1)[1]
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (the loopback URL the server logged)
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(securecomm_[a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


@pytest.fixture
def srv(tmp_path):
    server = ServerProc(tmp_path / "srv", "--metrics", "127.0.0.1:0", "--mailbox-messages", "1").start()
    yield server
    server.stop(signal.SIGKILL)


def test_counters_move_as_clients_use_the_server(srv, tmp_path):
    before = scrape(srv)
    assert before["securecomm_connections_open"] == 0
    assert before["securecomm_mailbox_depth"] == 0
    homes = users_logged_in(srv, tmp_path)  # two password logins that register a key
    assert login(tmp_path / "guess", srv, "alice", "wrong password").returncode == 5
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as plain:  # not TLS at all
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        plain.recv(100)
    srv.wait_log("TLS handshake failed")
    raw = tls_socket(srv)  # one connection held open while scraped
    try:
        sent = sc(homes["alice"], "send", "--to", "bob", "waiting")  # bob is offline: it waits
        assert sent.returncode == 0, sent.stderr
        after = scrape(srv)
        assert after['securecomm_logins_total{method="password",result="ok"}'] >= 2
        assert after['securecomm_logins_total{method="key",result="ok"}'] >= 1
        assert after['securecomm_logins_total{method="password",result="failed"}'] == 1
        assert after["securecomm_mailbox_depth"] == 1
        assert after["securecomm_connections_open"] >= 1
        assert after['securecomm_connections_refused_total{reason="tls_handshake"}'] == 1
    finally:
        raw.close()
    assert sc(homes["bob"], "inbox").returncode == 0
    final = scrape(srv)
    assert final["securecomm_mailbox_depth"] == 0
    assert final['securecomm_messages_received_total{kind="direct"}'] == 1
    assert final["securecomm_messages_receipted_total"] == 1
    assert final["securecomm_messages_delivered_total"] == 1
    assert final["securecomm_commit_batch_size_count"] >= 1
    assert final["securecomm_commit_latency_seconds_count"] == final["securecomm_commit_batch_size_count"]
    assert sc(homes["alice"], "send", "--to", "bob", "fills the mailbox").returncode == 0
    assert sc(homes["alice"], "send", "--to", "bob", "one too many").returncode == 9  # --mailbox-messages 1
    assert scrape(srv)['securecomm_messages_refused_total{reason="mailbox_full"}'] == 1


def test_no_user_names_or_message_ids_in_labels(srv, tmp_path):
    homes = users_logged_in(srv, tmp_path)
    sent = sc(homes["alice"], "send", "--to", "bob", "--json", "labels")
    assert sent.returncode == 0
    msg_id = re.search(rb'"id": "([0-9a-f]+)"', sent.stdout).group(1).decode()
    text = "\n".join(scrape(srv))
    assert "alice" not in text and "bob" not in text and msg_id not in text
    for labels in re.findall(r"\{([^}]*)\}", text):
        for key in re.findall(r'(\w+)="', labels):
            assert key in {"reason", "method", "result", "kind", "le"}, key


def test_a_taken_metrics_port_is_one_clear_error(srv, tmp_path):
    port = re.search(r":(\d+)/metrics", srv.wait_log(r"metrics on \S+")).group(1)
    other = sc(tmp_path / "other", "serve", "--port", "0", "--metrics", f"127.0.0.1:{port}")
    assert other.returncode == 7
    assert other.stderr.decode().startswith(f"securecomm: error: cannot serve --metrics on 127.0.0.1:{port}")
    assert not (tmp_path / "other" / "tls").exists()


def test_idle_metrics_connections_cannot_take_the_relays_file_descriptors(srv, tmp_path):
    """An attacker's check: prometheus_client's server kept one thread per connection for ever, so 1,000 idle
    connections to --metrics used up the relay's file descriptors and no client could log in. Now at most
    METRICS_CONNECTIONS are served at once (the rest closed at once) and each has a deadline."""
    import os

    from securecomm.server.metrics import METRICS_CONNECTIONS

    url = srv.wait_log(r"metrics on http://127\.0\.0\.1:\d+/metrics").split(" on ", 1)[1]
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    fds_before = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    try:
        for s in idle[:50]:
            s.sendall(b"GET /metr")  # half a request, never finished
        # the relay still serves its own clients while the metrics port is flooded
        homes = users_logged_in(srv, tmp_path)
        assert sc(homes["alice"], "status").returncode == 0
        held = len(os.listdir(f"/proc/{srv.proc.pid}/fd")) - fds_before
        assert held <= METRICS_CONNECTIONS + 10, held  # before the fix: ~200 more descriptors
    finally:
        for s in idle:
            s.close()


def test_metrics_off_loopback_are_called_exposed():
    """The attacker's check (stop 26): --metrics 0.0.0.0:PORT served every interface without a word; serve
    now warns (server.metrics_exposed) for any address that is not loopback. (Tests bind loopback only, so
    the check itself is tested here.)"""
    from securecomm.cli.serve import exposed

    assert exposed("0.0.0.0") and exposed("::") and exposed("192.0.2.7") and exposed("2001:db8::1")
    assert not exposed("127.0.0.1") and not exposed("127.0.0.2") and not exposed("::1")
