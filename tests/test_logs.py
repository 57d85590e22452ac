"""Server log lines: stable event names, text and JSON formats, connection and user fields."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from securecomm.server.logs import EVENTS, JsonFormatter, Label, TextFormatter, event_name

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}


def server_log_templates() -> dict[str, str]:
    """template -> where, for every log call with a literal template in a module logging as securecomm.server."""
    found: dict[str, str] = {}
    for path in (ROOT / "securecomm").rglob("*.py"):
        text = path.read_text()
        # and securecomm.files (server/files.py): the attacker's check found its 15 lines unnamed ("files.log")
        if '"securecomm.server"' not in text and '"securecomm.files"' not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found[node.args[0].value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_server_log_line_has_a_stable_event_name():
    templates = server_log_templates()
    assert len(templates) > 30  # the scan found the server's calls
    missing = {t: where for t, where in templates.items() if t not in EVENTS}
    assert not missing, f"add these templates to securecomm.server.logs.EVENTS: {missing}"
    names = list(EVENTS.values())
    assert all(n == n.lower() and " " not in n for n in names)


def record(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("securecomm.server", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_event_connection_and_user():
    label = Label(7, "127.0.0.1:5000", "alice")
    line = JsonFormatter().format(record("%s logged in (%s%s)", label, "key", ""))
    obj = json.loads(line)
    assert (obj["event"], obj["conn"], obj["user"], obj["peer"]) == ("login.ok", 7, "alice", "127.0.0.1:5000")
    assert obj["msg"] == "conn=7 peer=127.0.0.1:5000 user=alice logged in (key)"
    assert obj["level"] == "info" and obj["ts"].endswith("Z")
    assert "\n" not in line


def test_an_explicit_event_wins_and_unknown_templates_get_a_fallback():
    assert event_name(record("anything", event="mailbox.expired")) == "mailbox.expired"
    assert event_name(record("not in the table %s", 1)) == "server.log"
    obj = json.loads(JsonFormatter().format(record("expired %d", 3, event="mailbox.expired", count=3)))
    assert obj["count"] == 3 and "user" not in obj


def test_text_lines_name_the_event_and_escape_control_characters():
    text = TextFormatter().format(record("%s disconnected", Label(3, "::1", "bo\x1b[2Jb")))
    assert " INFO conn.closed conn=3 peer=::1 user=bo" in text
    assert "\x1b" not in text and "\\x1b" in text
