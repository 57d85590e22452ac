"""A per-user budget on relayed bytes (second attack round, item 2; /tmp/atk2w/flood_cutoff.py).

Before: one room member sent 12 x 900 KB ROOM_SENDs in 0.11 s while another paused reading for
3 s, and the server cut the reader off ("not reading (5049684 bytes queued)"): any member could
get any other disconnected. Now what one user may have relayed is a token bucket in bytes
(--relay-rate, burst --max-frame), and beyond it the sender gets RATE_LIMITED, non-fatal.
"""

from __future__ import annotations

import os
import signal

from securecomm.crypto import room as R
from securecomm.wire import protocol as P
from tests.test_relay_limits import BOB, LONG, ME, Raw, _server

FLOOD = 12
BODY = 900_000


def test_one_member_cannot_get_a_paused_reader_cut_off(tmp_path):
    srv = _server(tmp_path)  # --relay-rate at its default
    try:
        reader = Raw(srv).start().login_key("bob", BOB)
        reader.send(P.Request(1, "join", {"room": "r"}))
        assert isinstance(reader.until(P.Result), P.Result)
        flooder = Raw(srv).start().login_key(LONG, ME)
        flooder.send(P.Request(1, "join", {"room": "r"}))
        assert isinstance(flooder.until(P.Result), P.Result)
        key = R.SenderKey.generate()
        payloads = [R.encrypt("r", os.urandom(BODY), ME, key) for _ in range(FLOOD)]
        flooder.send(*[P.RoomSend("r", p) for p in payloads])  # the reader reads nothing meanwhile
        answers = [flooder.until(P.Receipt) for _ in range(FLOOD)]
        assert not reader.closed(), srv.log  # it now reads: still connected (before: cut off)
        assert "user=bob dropped" not in srv.log
        refused = [a for a in answers if isinstance(a, P.Error)]
        assert all(a.code == P.ErrorCode.RATE_LIMITED and not a.fatal for a in refused), refused
        assert {a.msg_id for a in refused} <= {p[1:17] for p in payloads}  # each names its message
        assert len(refused) >= FLOOD - 4, answers  # burst 1 MiB + 512 KiB/s: one or two go through
        assert not flooder.closed()
        flooder.close()
        reader.close()
    finally:
        srv.stop(signal.SIGKILL)
