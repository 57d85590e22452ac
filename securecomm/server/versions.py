"""Which protocol versions this server serves: THE switch the move to version 2 flips (docs/PROTOCOL.md 6.7, 6.12).

While version-1 clients exist (the client's send, inbox and chat on version 2 land separately), the
server keeps serving them: a HELLO that lists only 1 is answered as before, an account's registered
version-1 key still logs in (LOGIN_KEY) beside its listed devices, and `--replace-key` still registers
a new version-1 key. A session whose HELLO listed 2 is a version-2 session and is refused every
version-1 envelope in DIRECT, ROOM_KEY and DELIVER (INTEGRITY naming the version), whatever this says.

Set SERVE_VERSION_1 to False at integration: a HELLO listing only 1 is then refused (VERSION, fatal,
"protocol version 1 is no longer served"), and only listed devices log in with a key.
"""

from __future__ import annotations

from collections.abc import Iterable

#: False: version 1 is no longer served (the end state of docs/PROTOCOL.md 6.7).
SERVE_VERSION_1 = True

#: The refusal of a HELLO that lists only version 1, once SERVE_VERSION_1 is off (6.7, VERSION, fatal).
VERSION_1_GONE = "protocol version 1 is no longer served"
#: The refusal of a version-1 envelope in a version-2 session's DIRECT or ROOM_KEY (6.6, INTEGRITY).
VERSION_1_ENVELOPE = ("version 1 envelope refused: it was sealed to a long-term key without forward secrecy "
                      "(this session speaks protocol version 2)")


def agreed(offered: Iterable[int], serve_version_1: bool | None = None) -> int | None:
    """The version a session speaks: 2 if the HELLO lists it, else 1 while it is served; None: refused.
    (The wire layer has already refused a HELLO sharing no version with it.)"""
    listed = set(offered)
    if 2 in listed:
        return 2
    return 1 if (SERVE_VERSION_1 if serve_version_1 is None else serve_version_1) else None
