"""The README's commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = ".venv/bin/python -m pytest -q"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"    {TEST_COMMAND}\n" in readme
    assert ci.rstrip().splitlines()[-1] == TEST_COMMAND


def test_readme_main_job_is_serve():
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && .venv/bin/securecomm serve" in readme
