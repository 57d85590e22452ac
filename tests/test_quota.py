"""Issue 10: storage quotas and size limits are refusals (exit 9) with a hint, and lose nothing.

Real server process, real TLS, real SQLite, the installed entry point.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.serverproc import ServerProc, mailbox_count, sc, users_logged_in


@pytest.fixture
def pair(tmp_path):
    srv = ServerProc(tmp_path / "srv", "--mailbox-messages", "2", "--mailbox-bytes", "20000").start()
    homes = users_logged_in(srv, tmp_path)
    yield srv, homes
    srv.stop(signal.SIGKILL)




def test_full_mailbox_is_a_clear_refusal_and_nothing_stored_is_lost(pair):
    srv, homes = pair
    for text in ("one", "two"):
        assert sc(homes["alice"], "send", "--to", "bob", text).returncode == 0
    r = sc(homes["alice"], "send", "--to", "bob", "three")
    assert r.returncode == 9, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert lines[0].startswith("securecomm: error: server: bob's mailbox is full (2 messages waiting; the limit is 2)")
    assert lines[1].startswith("securecomm: hint: ") and "securecomm inbox" in lines[1]
    assert "Traceback" not in r.stderr.decode()
    srv.wait_log("direct message to bob refused: mailbox is full")
    assert mailbox_count(srv) == 2
    got = sc(homes["bob"], "inbox", "--json")
    assert [json.loads(x)["body"] for x in got.stdout.splitlines()] == ["one", "two"]
    assert sc(homes["alice"], "send", "--to", "bob", "three").returncode == 0  # room again once read


def test_mailbox_byte_limit_through_the_cli(pair):
    srv, homes = pair
    big = b"x" * 12000  # one fits under 20,000 bytes, two do not
    assert sc(homes["alice"], "send", "--to", "bob", "-", input=big).returncode == 0
    r = sc(homes["alice"], "send", "--to", "bob", "-", input=big)
    assert r.returncode == 9
    assert b"bytes waiting and this message is" in r.stderr and b"the limit is 20000 bytes" in r.stderr
    assert mailbox_count(srv) == 1
    assert sc(homes["alice"], "send", "--to", "bob", "small").returncode == 0  # a small one still fits


# -- issue 10, item 10: a size limit is a refusal with a hint, not an integrity failure ----------
@pytest.mark.parametrize("to", [(), ("--to", "bob")])
def test_5mb_message_is_refused_with_the_limit_and_a_hint(pair, to):
    from securecomm.crypto.envelope import MAX_BODY_SIZE

    srv, homes = pair
    r = sc(homes["alice"], "send", *to, "-", input=b"m" * (5 * 1000 * 1000))
    assert r.returncode == 9, r.stderr
    err = r.stderr.decode().splitlines()
    assert err[0] == f"securecomm: error: message is larger than the limit of {MAX_BODY_SIZE} bytes; nothing was sent"
    assert err[1].startswith(f"securecomm: hint: send at most {MAX_BODY_SIZE} bytes at a time")
    assert "securecomm encrypt" in err[1]
    assert len(err) == 2  # no traceback
    assert mailbox_count(srv) == 0
