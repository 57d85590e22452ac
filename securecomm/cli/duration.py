"""A Click type for lengths of time: `30d`, `12h`, `90m`, `45s`, or plain seconds."""

from __future__ import annotations

import re
from typing import Any

import click

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


class Duration(click.ParamType):
    """Seconds as a float; `0` means never (the caller decides what never is)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool):
            self.fail("expected a duration such as 30d, 12h or 90s", param, ctx)
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            m = PATTERN.fullmatch(str(value).strip().lower())
            if m is None:
                self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m or 45s", param, ctx)
            seconds = float(m.group(1)) * UNITS[m.group(2) or "s"]
        if not 0 <= seconds < 10 * 365 * 86400:
            self.fail(f"{value!r} must be between 0 and 10 years", param, ctx)
        return seconds


DURATION = Duration()
