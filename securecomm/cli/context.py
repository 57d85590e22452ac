"""State shared by all commands, and the output helpers they print with."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from securecomm.paths import Paths


class State:
    """Built once by the group callback; commands get it with @pass_state."""

    # A plain class, not a dataclass: dataclasses import inspect (~6 ms of start-up).
    def __init__(self, home: str | None = None, verbose: int = 0) -> None:
        self.home = home
        self.verbose = verbose
        self._paths: Paths | None = None

    @property
    def paths(self) -> Paths:
        if self._paths is None:
            self._paths = Paths.resolve(self.home)
        return self._paths


pass_state = click.make_pass_decorator(State, ensure=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON object for scripts.")


def color_enabled() -> bool:
    return "NO_COLOR" not in os.environ


def style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if color_enabled() else text


def emit_json(obj: Any) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def info(message: str) -> None:
    click.echo(f"securecomm: {message}", err=True)


def warn(message: str) -> None:
    click.echo(style(f"securecomm: warning: {message}", fg="yellow", bold=True), err=True)


def table(rows: list[list[Any]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple")


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
