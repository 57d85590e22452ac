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

#: False: version 1 is no longer served (the end state of docs/PROTOCOL.md 6.7).
SERVE_VERSION_1 = True
