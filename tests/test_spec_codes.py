"""Every place docs/PROTOCOL.md names an error code with its number agrees with the code.

The table of section 3.6 is driven against the server by test_error_table.py; prose elsewhere (6.9 said
"21 PREKEY" after 21 and 22 went to EXPIRED and UNAVAILABLE) is not, and an independent client followed it.
"""

from __future__ import annotations

import re
from pathlib import Path

from securecomm.wire.messages import ErrorCode

SPEC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def test_numbered_code_names_in_the_spec_match_the_code():
    text = SPEC.read_text()
    names = {c.name: c.value for c in ErrorCode}
    rows = re.findall(r"^\| (\d{1,2}) \| ([A-Z][A-Z_]+) \|", text, flags=re.M)  # | 23 | PREKEY | ...
    prose = re.findall(r"(?<![\w.])(\d{1,2}) ([A-Z][A-Z_]{3,}) \(", text)  # "23 PREKEY (not fatal, ..."
    found = [(int(n), name) for n, name in rows + prose if name in names]
    assert len(found) >= len(names)  # the table alone names each once
    wrong = sorted({(n, name) for n, name in found if names[name] != n})
    assert not wrong, f"PROTOCOL.md numbers these codes differently from wire/messages.py: {wrong}"
