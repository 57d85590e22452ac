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
