"""First-run correctness and error messages: one grammar, documented exit codes, clear hints."""

from __future__ import annotations

import os
import subprocess

import pytest

from securecomm.cli.main import cli
from tests.conftest import ENTRY


def _lines(result) -> list[str]:
    return result.stderr.strip().splitlines()


@pytest.mark.parametrize(("args", "error", "hint"), [
    (["sned", "hi"], "no such command 'sned'", "did you mean 'send'?"),
    (["user", "ad", "bob"], "no such command 'ad'", "did you mean 'add'?"),
    (["contacts", "trus", "bob"], "no such command 'trus'", "did you mean 'trust'?"),
    (["keygen", "--nmae", "x"], "no such option '--nmae'", "did you mean '--name'?"),
    (["--bogus-flag", "paths"], "no such option '--bogus-flag'", None),
    (["send"], "missing argument 'MESSAGE'", "see: securecomm send --help"),
    (["user", "add"], "missing argument 'NAME'", "see: securecomm user add --help"),
    (["keygen", "--kem", "rsa"], "invalid value for '--kem': 'rsa' is not one of", "see: securecomm keygen --help"),
    (["decrypt", "--from"], "option '--from' requires an argument", None),
])
def test_click_usage_errors_use_the_project_grammar(runner, home, args, error, hint):
    result = runner.invoke(cli, ["--home", str(home), *args], prog_name="securecomm")
    assert result.exit_code == 2, result.output
    lines = _lines(result)
    assert lines[0].startswith(f"securecomm: error: {error}"), lines
    assert not lines[0].endswith(".")
    assert "Usage:" not in result.stderr and "Error:" not in result.stderr
    if hint is not None:
        assert lines[1] == f"securecomm: hint: {hint}", lines
    assert len(lines) <= 2


def test_group_without_subcommand_still_shows_help(runner):
    result = runner.invoke(cli, ["user"])
    assert "Commands:" in result.output
    assert "securecomm: error" not in result.output


def test_completion_into_a_closed_pipe_is_not_an_internal_error():
    # `securecomm completion bash | true`: the reader is gone before we write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([ENTRY, "completion", "bash"], stdout=write_end, stderr=subprocess.PIPE,
                              timeout=60, check=False)
    finally:
        os.close(write_end)
    assert b"internal error" not in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert proc.returncode == 1  # Click's quiet exit for a broken pipe, not a crash


# -- issue 10 item 8: serve on a port in use ------------------------------------------------
def test_serve_on_a_port_in_use_says_so(home):
    import socket

    from tests.conftest import run_entry

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_entry("--home", str(home), "serve", "--port", str(port))
    err = result.stderr.decode()
    assert result.returncode == 7, err
    assert f"securecomm: error: cannot listen on 127.0.0.1:{port}: the address is already in use" in err
    assert "securecomm: hint:" in err and "--port" in err
    assert "internal error" not in err and "Traceback" not in err


# -- issue 10 item 9: a wrong --home must not quietly make an empty database ----------------
PASSWORD = "correct horse battery\n"


def test_user_list_on_a_missing_database_names_the_path(sc, home):
    result = sc("user", "list")
    db = home / "securecomm.db"
    assert result.exit_code == 3
    assert f"securecomm: error: no database at {db}" in result.stderr
    assert "--home" in result.stderr  # the hint names the likely mistake
    assert not db.exists()


@pytest.mark.parametrize("command", [["passwd", "bob", "--password-stdin"], ["remove", "bob", "--yes"]])
def test_other_user_commands_do_not_create_a_database(sc, home, command):
    result = sc("user", *command, input=PASSWORD)
    assert result.exit_code == 3
    assert "no database at" in result.stderr
    assert not (home / "securecomm.db").exists()


def test_user_add_says_it_created_a_database_and_where_it_wrote(sc, home):
    db = home / "securecomm.db"
    first = sc("user", "add", "bob", "--password-stdin", input=PASSWORD)
    assert first.exit_code == 0, first.stderr
    assert f"securecomm: created a new database at {db}" in first.stderr
    assert f"created user bob in {db}" in first.stderr
    second = sc("user", "add", "carol", "--password-stdin", input=PASSWORD)
    assert second.exit_code == 0
    assert "created a new database" not in second.stderr
    assert f"created user carol in {db}" in second.stderr


def test_serve_says_it_created_a_new_database(home):
    from tests.serverproc import ServerProc

    server = ServerProc(home).start()
    try:
        assert f"created a new database at {home / 'securecomm.db'}" in server.log
    finally:
        server.stop()
    again = ServerProc(home).start()
    try:
        assert "created a new database" not in again.log
    finally:
        again.stop()
