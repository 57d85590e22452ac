"""Places for connections that have not logged in (pure logic, no sockets)."""

from __future__ import annotations

from securecomm.server.admission import Admission, Ticket, source_key


def test_per_address_limit_leaves_other_addresses_alone():
    a = Admission(total=10, per_address=2)
    t1, t2 = a.admit("127.0.0.2"), a.admit("127.0.0.2")
    assert isinstance(t1, Ticket) and isinstance(t2, Ticket)
    refused = a.admit("127.0.0.2")
    assert isinstance(refused, str) and "per address" in refused
    assert isinstance(a.admit("127.0.0.1"), Ticket)
    assert a.count == 3  # the refusal took no place


def test_total_limit():
    a = Admission(total=2, per_address=5)
    assert isinstance(a.admit("10.0.0.1"), Ticket) and isinstance(a.admit("10.0.0.2"), Ticket)
    refused = a.admit("10.0.0.3")
    assert isinstance(refused, str) and "the maximum" in refused


def test_release_gives_the_place_back_once_and_forgets_the_address():
    a = Admission(total=1, per_address=1)
    t = a.admit("127.0.0.1")
    assert isinstance(t, Ticket)
    t.release()
    t.release()  # the login path and the close path both release: counted once
    assert a.count == 0 and a.by_source == {}
    assert isinstance(a.admit("127.0.0.1"), Ticket)


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4():
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_key("2001:db8:0:1::1") != source_key("2001:db8::1")
    assert source_key("::ffff:127.0.0.1") == "127.0.0.1"
    assert source_key("::1") == "::/64"
    assert source_key("fe80::1%eth0") == "fe80::/64"


def test_a_reserve_is_kept_for_addresses_that_hold_no_place():
    """Two addresses fill what they may; the last eighth still admits one connection from each new address."""
    a = Admission(total=16, per_address=8)  # reserve: 2
    for source in ("127.0.0.2", "127.0.0.3"):
        for _ in range(7):
            assert isinstance(a.admit(source), Ticket)
    crowded = a.admit("127.0.0.2")  # under its own limit, but only the reserve is left
    assert isinstance(crowded, str) and "kept for other addresses" in crowded
    assert isinstance(a.admit("127.0.0.1"), Ticket)
    assert isinstance(a.admit("127.0.0.1"), str)  # one reserve place per address
    assert isinstance(a.admit("127.0.0.4"), Ticket)
    assert a.count == 16 and isinstance(a.admit("127.0.0.5"), str)
