"""`securecomm send`, `status`, `chat` (not implemented yet)."""

from __future__ import annotations

import click

from securecomm.errors import NotImplementedYet


def _stub(name: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True},
                   help=f"Not implemented yet (exit code 2): {name}.")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise NotImplementedYet(f"{name} is not implemented yet")

    return command


send = _stub("send")
status = _stub("status")
chat = _stub("chat")
