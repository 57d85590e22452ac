"""Checking the shape of what a server answered, before any of it is used.

The wire layer checks the frame and that a RESULT has a `rid` and `data`; what
is inside `data` is whatever JSON the server chose. A broken server, or one
whose key an attacker holds, may put a number where an identity line belongs,
or a string where a member entry belongs. Every field the client reads from a
RESULT goes through one of these functions, so that a wrong one becomes one
clear IntegrityError (exit 6, "the server sent a malformed answer") instead of
an AttributeError deep inside the client (exit 1, "internal error").
"""

from __future__ import annotations

from typing import Any

from securecomm.errors import FormatError, IntegrityError

HINT = "this is not a securecomm server, or a broken one; nothing it sent was used"
#: JSON values a table cell may show (escaped); a dict or a list in a cell is malformed.
SCALARS = (str, int, float, bool, type(None))


def check_user_name(name: object) -> None:
    """Names come from the server's directory: one that breaks the server's own
    user-name rule (say, carrying terminal escapes) is refused, never saved."""
    from securecomm.store.db import NAME_RE

    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FormatError(f"the server sent an invalid user name {name!a}")


def malformed(what: str) -> IntegrityError:
    return IntegrityError(f"the server sent a malformed answer ({what})", hint=HINT)


def obj(data: Any, what: str) -> dict[str, Any]:
    """`data` as a JSON object, or a malformed answer naming `what` it should have been."""
    if not isinstance(data, dict):
        raise malformed(f"{what} is not an object")
    return data


def text(o: dict[str, Any], name: str, what: str) -> str:
    value = o.get(name)
    if not isinstance(value, str):
        raise malformed(f"{what}: '{name}' is not text")
    return value


def items(o: dict[str, Any], name: str, what: str) -> list[Any]:
    value = o.get(name)
    if not isinstance(value, list):
        raise malformed(f"{what}: '{name}' is not a list")
    return value


def member(entry: Any) -> tuple[str, str]:
    """One {user, identity} entry of a join/who result: (user, identity line); the name checked too."""
    e = obj(entry, "a member entry")
    user, line = text(e, "user", "a member entry"), text(e, "identity", "a member entry")
    check_user_name(user)
    return user, line


def user_rows(data: Any, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """A user_list result: a list of objects with every column, each a plain value (shown escaped)."""
    if not isinstance(data, list):
        raise malformed("the user list is not a list")
    rows = [obj(row, "a user row") for row in data]
    for row in rows:
        for column in columns:
            if column not in row or not isinstance(row[column], SCALARS):
                raise malformed(f"a user row: '{column}' is missing or not a plain value")
    return rows
