"""Shared fixtures: a temporary --home, Click's runner, the installed entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from securecomm.cli.main import cli

#: The private PostgreSQL and nats-server fixtures (issue 13).
pytest_plugins = ["tests.cluster"]

ENTRY = shutil.which("securecomm", path=str(Path(sys.executable).parent)) or shutil.which("securecomm")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def sc(runner: CliRunner, home: Path):
    """Invoke the CLI in-process with --home set; returns Click's Result."""

    def invoke(*args: str, input: str | bytes | None = None, home_dir: Path | None = None):
        return runner.invoke(cli, ["--home", str(home_dir or home), *args], input=input, catch_exceptions=False)

    return invoke


def run_entry(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `securecomm` executable in a subprocess."""
    assert ENTRY, "the securecomm entry point is not installed (pip install -e .)"
    full_env = {k: v for k, v in os.environ.items() if k != "SECURECOMM_HOME"}
    full_env.update(env or {})
    return subprocess.run([ENTRY, *args], input=input, capture_output=True, env=full_env, timeout=timeout,
                          check=False)
