"""server/session.py's Mailbox without sockets: a server-side wire.Connection in READY stands in for the session.

The Mailbox promises each stored direct message goes out once, in increasing seq, and stays
outstanding until its ACK; one too large to frame is skipped (logged) without blocking the rest."""

from __future__ import annotations

import logging

import pytest

from securecomm.server.session import Mailbox
from securecomm.store.db import MailItem
from securecomm.wire import protocol as P

SMALL_FRAME = 4096


class Wire:
    """A session's outgoing half over a real wire.Connection, read back by a real client Connection."""

    def __init__(self, max_frame: int = SMALL_FRAME) -> None:
        self.server, self.client = P.Connection("server", max_frame), P.Connection("client", max_frame)
        self._pump(self.client.send(P.Hello()), self.server)
        self._pump(self.server.send(P.ServerHello(P.PROTOCOL_VERSION, "line", b"\x00" * P.CHALLENGE_SIZE,
                                                  max_frame)), self.client)
        self._pump(self.client.send(P.LoginKey("bob", b"\x00" * 64)), self.server)
        self._pump(self.server.send(P.LoginOk("bob", "user", None)), self.client)
        assert self.server.state is P.State.READY
        self.received: list[P.Event] = []

    @staticmethod
    def _pump(data: bytes, to: P.Connection) -> None:
        to.receive_data(data)
        while to.next_event() is not None:
            pass

    def send(self, event: P.Event) -> None:
        self.client.receive_data(self.server.send(event))
        while (ev := self.client.next_event()) is not None:
            self.received.append(ev)

    def label(self) -> str:
        return "peer=unit user=bob"

    def seqs(self) -> list[int]:
        return [ev.seq for ev in self.received if isinstance(ev, P.Deliver)]


def item(seq: int, size: int = 10) -> MailItem:
    return MailItem(seq, "alice", 1_700_000_000_000 + seq, bytes([seq % 256]) * size)


@pytest.fixture
def wire() -> Wire:
    return Wire()


def _box(wire: Wire) -> Mailbox:
    return Mailbox(wire)  # type: ignore[arg-type]  # Mailbox uses only send() and label()


def test_offers_go_out_in_order_with_their_fields(wire):
    box = _box(wire)
    for seq in (1, 2, 5):
        box.offer(item(seq))
    assert wire.seqs() == [1, 2, 5]
    first = wire.received[0]
    assert (first.sender, first.stored_at_ms, first.envelope) == ("alice", 1_700_000_000_001, b"\x01" * 10)
    assert box.high == 5 and box.outstanding == {1, 2, 5}


def test_each_message_is_offered_once(wire):
    box = _box(wire)
    box.offer(item(3))
    box.offer(item(3))  # a store read and a wake-up both found it
    box.offer(item(2))  # older than what was offered: it went out before (or is a late duplicate)
    assert wire.seqs() == [3]
    assert box.outstanding == {3}


def test_ack_clears_outstanding_and_unknown_acks_are_harmless(wire):
    box = _box(wire)
    box.offer(item(1))
    box.offer(item(2))
    box.acked(1)
    box.acked(99)  # never offered
    assert box.outstanding == {2}
    box.acked(2)
    assert box.outstanding == set() and box.high == 2  # acking does not let an old seq go out again
    box.offer(item(2))
    assert wire.seqs() == [1, 2]


def test_a_message_too_large_to_frame_is_skipped_not_outstanding(wire, caplog):
    box = _box(wire)
    with caplog.at_level(logging.ERROR, logger="securecomm.server"):
        box.offer(item(1, size=SMALL_FRAME * 2))
    box.offer(item(2))
    assert wire.seqs() == [2]  # the rest of the mailbox still flows
    assert box.outstanding == {2} and box.high == 2
    assert "message 1 not delivered" in caplog.text and "alice" not in caplog.text  # not who wrote to whom


def test_a_closed_connection_keeps_the_offer_outstanding(wire):
    box = _box(wire)
    wire.send(P.Error(int(P.ErrorCode.SHUTTING_DOWN), "bye", True))  # the connection is now CLOSED
    box.offer(item(4))
    assert wire.seqs() == []
    assert box.outstanding == {4} and box.high == 4  # not lost: the next login offers it from the store


def test_a_new_mailbox_starts_empty(wire):
    box = _box(wire)
    assert (box.high, box.outstanding, box.backlog) == (0, set(), False)
