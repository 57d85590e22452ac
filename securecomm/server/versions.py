"""Which protocol versions this server serves (docs/PROTOCOL.md 6.7, 6.12).

Version 1 is no longer served: a HELLO listing only 1 is refused (VERSION, fatal, "protocol version 1
is no longer served"), and an account with a user key logs in with a key only from a listed device.
A session whose HELLO listed 2 is refused every version-1 envelope in DIRECT and ROOM_KEY (INTEGRITY
naming the version).

The transitional behaviour (a HELLO listing only 1 answered version 1, an account's registered
version-1 key logging in beside its listed devices, `--replace-key` registering a version-1 key) is
kept for tests and benchmarks that need a version-1 baseline in the same run: ServerConfig
`serve_version_1` (default SERVE_VERSION_1), not a command-line option.
"""

from __future__ import annotations

from collections.abc import Iterable

#: False: version 1 is no longer served (docs/PROTOCOL.md 6.7). The default of ServerConfig.serve_version_1.
SERVE_VERSION_1 = False

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
