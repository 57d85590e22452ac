"""Pure parts of the server wing without sockets: TokenBucket, the in-process bus, and the import seams."""

from __future__ import annotations

import subprocess
import sys

from securecomm.net.bus import LocalBus
from securecomm.server.session import TokenBucket


def test_token_bucket_allows_its_burst_then_refuses():
    bucket = TokenBucket(rate=1e-9, burst=3)  # refills ~nothing while the test runs
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_token_bucket_refuses_a_cost_larger_than_its_burst():
    bucket = TokenBucket(rate=1e-9, burst=100)
    assert not bucket.take(101)
    assert bucket.take(100)  # a refused take spent nothing


def test_token_bucket_rate_zero_is_unlimited():
    bucket = TokenBucket(rate=0, burst=1)
    assert all(bucket.take(10**9) for _ in range(100))


def test_local_bus_wakes_every_subscriber_with_the_user_id_and_what_it_carries():
    bus, woken = LocalBus(), []
    bus.on_mail(lambda uid, item: woken.append((uid, item)))
    bus.on_mail(lambda uid, item: woken.append((-uid, item)))
    bus.publish_mail(7)
    bus.publish_mail(8, b"item")
    assert woken == [(7, b""), (-7, b""), (8, b"item"), (-8, b"item")]


def test_a_carried_message_round_trips_and_anything_else_means_read_the_store():
    from securecomm.server.relay import CARRY_MAX, decode_carried, encode_carried
    from securecomm.store.db import MailItem

    item = MailItem(12, "alice", 1_764_115_200_000, b"sealed")
    assert decode_carried(encode_carried(item, 11)) == (item, 11)
    assert decode_carried(encode_carried(item, 0)) == (item, 0)  # the mailbox was empty before it
    assert encode_carried(item, None) == b""  # the store did not say what came before (SQLite)
    assert encode_carried(MailItem(12, "alice", 0, b"x" * (CARRY_MAX + 1)), 11) == b""
    good = encode_carried(item, 11)
    for bad in (b"", good[:20], good[:25] + b"\xff" + good[26:], encode_carried(MailItem(12, "a", 0, b"e"), 12)):
        assert decode_carried(bad) is None, bad


def test_local_bus_room_event_carries_the_frame_and_its_origin():
    bus, seen = LocalBus(), []
    bus.on_room(lambda room, frame, origin: seen.append((room, frame, origin)))
    me = object()
    bus.publish_room("lobby", b"\x01frame", me)
    assert seen == [("lobby", b"\x01frame", me)]


def test_session_and_intake_load_no_database_driver():
    """server/session.py and server/intake.py must run unchanged over another store (issue 11)."""
    code = ("import sys, securecomm.server.session, securecomm.server.intake, securecomm.store.api; "
            "print(sorted(m for m in ('sqlite3', '_sqlite3', 'securecomm.store.db', 'securecomm.server.listener') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
