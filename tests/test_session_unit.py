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


def test_local_bus_wakes_every_subscriber_with_only_the_user_id():
    bus, woken = LocalBus(), []
    bus.on_mail(woken.append)
    bus.on_mail(lambda uid: woken.append(-uid))
    bus.publish_mail(7)
    assert woken == [7, -7]


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
