"""`securecomm user ...` (not implemented yet)."""

from __future__ import annotations

import click

from securecomm.cli.client import _stub


@click.group()
def user() -> None:
    """Manage user accounts. Not implemented yet (exit code 2)."""


for _name in ("add", "login", "list", "passwd", "remove"):
    user.add_command(_stub(_name))
