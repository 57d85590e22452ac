"""`securecomm paths` and `securecomm completion`."""

from __future__ import annotations

import click

from securecomm.cli.context import State, emit_json, json_option, pass_state, table


@click.command(epilog="Example: securecomm --home /tmp/sc paths --json")
@json_option
@pass_state
def paths(state: State, as_json: bool) -> None:
    """Print where securecomm keeps config, keys, certificates and the database."""
    where = state.paths.table()
    if as_json:
        emit_json({k.replace(" ", "_"): str(v) for k, v in where.items()})
        return
    click.echo(table([[k, str(v)] for k, v in where.items()], headers=["what", "path"]))


@click.command(epilog="Example: mkdir -p ~/.local/share/bash-completion/completions && "
               "securecomm completion bash > ~/.local/share/bash-completion/completions/securecomm")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the tab-completion script for SHELL (bash, zsh or fish)."""
    from click.shell_completion import get_completion_class

    from securecomm.cli.main import cli

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None  # Choice above admits only shells Click knows
    comp = comp_cls(cli, {}, "securecomm", "_SECURECOMM_COMPLETE")
    click.echo(comp.source())
