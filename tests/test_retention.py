"""--mailbox-ttl: unread direct messages are dropped, counted, logged as counts, and their sender is told."""

from __future__ import annotations

import json
import re
import signal
import urllib.request

import pytest

from tests.serverproc import ServerProc, mailbox_count, sc, users_logged_in

BODY = "nobody will read this in time"


@pytest.fixture
def srv(tmp_path):
    server = ServerProc(tmp_path / "srv", "--mailbox-ttl", "2s", "--metrics", "127.0.0.1:0").start()
    yield server
    server.stop(signal.SIGKILL)


def expired_total(srv: ServerProc) -> float:
    url = srv.wait_log(r"metrics on http://\S+").split(" on ", 1)[1]
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (the loopback URL the server logged)
        text = r.read().decode()
    return float(re.search(r"^securecomm_messages_expired_total (\S+)$", text, re.M).group(1))


def test_send_wait_learns_that_an_unread_message_expired(srv, tmp_path):
    homes = users_logged_in(srv, tmp_path)  # bob logs in once, then stays away
    r = sc(homes["alice"], "send", "--to", "bob", "--wait", "--timeout", "60", "--json", BODY)
    assert r.returncode == 9, r.stderr
    status = json.loads(r.stdout)
    assert status["status"] == "expired" and status["to"] == "bob"
    err = r.stderr.decode()
    assert err.startswith(f"securecomm: error: message {status['id']} to bob expired") and "Traceback" not in err
    assert mailbox_count(srv) == 0
    inbox = sc(homes["bob"], "inbox")
    assert inbox.returncode == 0 and BODY.encode() not in inbox.stdout
    line = srv.wait_log(r"mailbox\.expired expired \d+ direct messages that waited longer than --mailbox-ttl")
    assert "expired 1 direct" in line
    assert status["id"] not in srv.log and "bob" not in line  # counts only: never who or which
    assert expired_total(srv) == 1


def test_a_message_read_in_time_is_not_expired(tmp_path):
    srv = ServerProc(tmp_path / "srv", "--mailbox-ttl", "10m", "--metrics", "127.0.0.1:0").start()
    try:
        _read_in_time(srv, tmp_path)
    finally:
        srv.stop(signal.SIGKILL)


def _read_in_time(srv: ServerProc, tmp_path) -> None:
    homes = users_logged_in(srv, tmp_path)
    sent = sc(homes["alice"], "send", "--to", "bob", "in time")
    assert sent.returncode == 0, sent.stderr
    inbox = sc(homes["bob"], "inbox")
    assert b"in time" in inbox.stdout
    assert expired_total(srv) == 0
