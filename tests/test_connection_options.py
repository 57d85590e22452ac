"""One connection-option stack: every command that connects takes the same --server, --ca, --pin and
--passphrase-file, with the same help (before, `user login` declared its own, `inbox` had no --ca or
--pin and `chat` no --server)."""

from __future__ import annotations

import importlib

import pytest

from securecomm.cli.main import COMMANDS

CONNECTION = ("--server", "--ca", "--pin", "--passphrase-file")
CONNECTING = [("send",), ("status",), ("inbox",), ("chat",), ("user", "login"), ("devices",), ("devices", "remove"),
              ("devices", "approve"), ("contacts", "verify"), ("user", "list")]  # user list: for --remote


def command(path: tuple[str, ...]):
    module, attr, _ = COMMANDS[path[0]]
    cmd = getattr(importlib.import_module(module), attr)
    for name in path[1:]:
        cmd = cmd.commands[name]
    return cmd


def options(cmd) -> dict[str, str | None]:
    return {opt: p.help for p in cmd.params for opt in p.opts if opt in CONNECTION}


@pytest.mark.parametrize("path", CONNECTING, ids=" ".join)
def test_every_connecting_command_takes_the_same_connection_options(path):
    reference = options(command(("send",)))
    assert sorted(reference) == sorted(CONNECTION)
    assert options(command(path)) == reference


def test_chat_and_inbox_accept_the_options_they_lacked(tmp_path):
    """`inbox --ca` and `chat --server` are accepted (before: "no such option", exit 2); with no profile in
    the home the command then fails for that reason, not for its options."""
    from click.testing import CliRunner

    from securecomm.cli.main import cli

    home = tmp_path / "home"
    runner = CliRunner()
    for args in (["inbox", "--ca", str(tmp_path / "missing.pem")], ["chat", "--server", "127.0.0.1:1"]):
        result = runner.invoke(cli, ["--home", str(home), *args])
        assert "no such option" not in result.output, result.output
        assert result.exit_code not in (0, 2), result.output
        assert "profile" in result.output.lower() or "login" in result.output.lower(), result.output
