"""`securecomm serve` (not implemented yet)."""

from __future__ import annotations

import click

from securecomm.errors import NotImplementedYet


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Run the TLS 1.3 message server. Not implemented yet (exit code 2)."""
    raise NotImplementedYet("serve is not implemented yet")
