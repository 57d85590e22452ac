"""Shell completion: shipped scripts are current, and bash really completes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ENTRY, run_entry

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shipped_completion_scripts_are_current(runner, shell):
    from securecomm.cli.main import cli

    result = runner.invoke(cli, ["completion", shell])
    assert result.exit_code == 0
    shipped = (ROOT / "completions" / f"securecomm.{shell}").read_text()
    assert result.output == shipped, f"regenerate with: securecomm completion {shell} > completions/securecomm.{shell}"


def complete(words: str, cword: int) -> list[str]:
    result = run_entry(env={"_SECURECOMM_COMPLETE": "bash_complete", "COMP_WORDS": words,
                            "COMP_CWORD": str(cword)})
    assert result.returncode == 0, result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.decode().splitlines()]


def test_click_protocol_completes_commands():
    assert complete("securecomm us", 1) == ["user"]
    assert set(complete("securecomm user ", 2)) == {"add", "login", "list", "passwd", "remove"}


def test_click_protocol_completes_the_device_commands():
    assert complete("securecomm dev", 1) == ["devices"]
    assert "remove" in complete("securecomm devices ", 2)
    assert "verify" in complete("securecomm contacts ", 2)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_real_bash_completion():
    script = ROOT / "completions" / "securecomm.bash"
    bin_dir = str(Path(ENTRY).parent)

    def tab(line: str) -> list[str]:
        words = line.split(" ")
        program = (
            f"source {script}\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
            f"COMP_CWORD={len(words) - 1}\n"
            "_securecomm_completion securecomm\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
        out = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, env=env,
                             timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        return [w for w in out.stdout.splitlines() if w]

    assert tab("securecomm us") == ["user"]
    assert set(tab("securecomm user ")) == {"add", "login", "list", "passwd", "remove"}
