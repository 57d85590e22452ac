"""The command itself: help, version, lazy loading, error grammar, exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from securecomm import __version__
from securecomm.cli.main import COMMANDS, cli
from securecomm.errors import EXIT_CODES, SecurecommError
from tests.conftest import run_entry

ROOT = Path(__file__).resolve().parent.parent


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_command(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s", result.output, re.M), name


def _all_commands():
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        yield name, cmd
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield f"{name} {sub}", cmd.get_command(ctx, sub)


@pytest.mark.parametrize(("name", "cmd"), list(_all_commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_and_is_documented(name, cmd):
    assert cmd is not None
    assert cmd.help and len(cmd.help) > 20, f"{name} needs help text"
    assert "Example" in (cmd.epilog or ""), f"{name} --help needs a worked example"
    readme = (ROOT / "README.md").read_text()
    assert f"securecomm {name}" in readme, f"README does not document `securecomm {name}`"


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from securecomm.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('cryptography', 'asyncio', 'sqlite3', 'ssl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_completion_does_not_import_heavy_modules():
    code = (
        "import os, sys\n"
        "os.environ.update({'_SECURECOMM_COMPLETE': 'bash_complete', 'COMP_WORDS': 'securecomm user ',"
        " 'COMP_CWORD': '2'})\n"
        "from securecomm.cli.main import main\n"
        "try:\n    main([])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('cryptography', 'asyncio', 'sqlite3', 'ssl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "plain,login" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_python_dash_m_matches_entry_point(home):
    via_m = subprocess.run([sys.executable, "-m", "securecomm", "--version"], capture_output=True, text=True,
                           check=False)
    via_entry = run_entry("--version")
    assert via_m.returncode == 0 == via_entry.returncode
    assert via_m.stdout == via_entry.stdout.decode()


def test_readme_exit_code_table_matches_errors():
    readme = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\|\s*{code}\s*\|\s*{re.escape(meaning)}\s*\|", readme, re.M), code


def test_every_error_class_has_a_documented_exit_code():
    def walk(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)

    for cls in walk(SecurecommError):
        assert cls.exit_code in EXIT_CODES, cls


def test_error_is_one_line_without_traceback(home):
    result = run_entry("--home", str(home), "keygen", "--show", "--name", "nobody")
    err = result.stderr.decode()
    assert result.returncode == 3
    assert err.startswith("securecomm: error: no identity named 'nobody'")
    assert "Traceback" not in err
    assert "securecomm: hint:" in err


def test_verbose_shows_traceback(home):
    result = run_entry("-v", "--home", str(home), "keygen", "--show", "--name", "nobody")
    assert result.returncode == 3
    assert "Traceback" in result.stderr.decode()


def test_bad_option_value_is_usage_error(sc):
    result = sc("keygen", "--kem", "rsa")
    assert result.exit_code == 2


def test_home_env_var_moves_paths(runner, tmp_path):
    result = runner.invoke(cli, ["paths", "--json"], env={"SECURECOMM_HOME": str(tmp_path)})
    assert result.exit_code == 0
    assert str(tmp_path) in result.output
    assert '"database": "' + str(tmp_path) in result.output


def test_no_color_is_honoured(monkeypatch):
    from securecomm.cli import context

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" in context.style("warning", fg="yellow")
    monkeypatch.setenv("NO_COLOR", "1")
    assert context.style("warning", fg="yellow") == "warning"


def test_a_refused_first_password_creates_no_database(sc, home):
    """The new user's check (stop 26): `user add` with a refused password still created an empty database."""
    r = sc("user", "add", "dave", "--password-stdin", input="password\n")
    assert r.exit_code == 2 and "securecomm: error:" in r.output, r.output
    assert not (home / "securecomm.db").exists()
    ok = sc("user", "add", "dave", "--password-stdin", input="correct horse battery\n")
    assert ok.exit_code == 0 and (home / "securecomm.db").exists(), ok.output
