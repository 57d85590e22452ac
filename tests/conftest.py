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


# -- the fast set ---------------------------------------------------------------------------------
#: Files that start real server subprocesses, drive tmux or run the installed entry point (or the
#: benchmark harness) in subprocesses. They carry the `slow` marker so that
#: `python -m pytest -q -m "not slow"` is the fast set a developer runs while editing; CI runs all.
#: Kept here, not as a `pytestmark` line in each file, so this list is the one place to look.
SLOW_FILES = frozenset({
    "test_file_cutthrough.py", "test_keepalive.py",
    "test_account_races.py", "test_accounts.py", "test_bench_devices.py", "test_benchmarks.py", "test_chat_restart.py",
    "test_chat_send_background.py", "test_chat_tty.py", "test_cli.py", "test_cli_errors.py", "test_completion.py",
    "test_devices_e2e.py", "test_devices_cli.py", "test_direct_ahead.py", "test_forward_secrecy_cli.py",
    "test_multidevice.py", "test_multidevice_cli.py", "test_multidevice_tty.py", "test_multidevice_files_cli.py",
    "test_delivery.py", "test_direct_ids.py", "test_dos.py", "test_error_table.py", "test_hostile_server.py",
    "test_load_faults.py", "test_login_names.py", "test_messaging.py", "test_newuser_fixes.py", "test_offline.py",
    "test_newuser_fixes2.py",
    "test_password_only.py", "test_postgres.py", "test_postgres_relay.py",
    "test_pq_server.py", "test_pqtls.py", "test_quota.py", "test_relay_limits.py",
    "test_rooms.py", "test_rooms_v2.py", "test_send_retry.py", "test_server.py", "test_trust.py", "test_wrap_forge.py",
    "test_backup.py", "test_health.py", "test_log_secrets.py", "test_metrics.py", "test_serve_config.py",
    "test_sighup.py", "test_retention.py",
    "test_offline_stream.py", "test_bigfile_bench.py", "test_file_transfer.py",
    "test_failover.py", "test_nats_bus.py", "test_three_relays.py", "test_cluster_files.py",
    "test_server_memory.py",
    "test_devux.py",  # devices as a careful user expects them (findings/newuser2.md)
    "test_ops_fixes.py",  # operator, cluster and install (findings/newuser2.md)
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
