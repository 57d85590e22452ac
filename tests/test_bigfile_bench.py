"""benchmarks/bigfile.py runs end to end in --quick mode and reports every figure (not asserted here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("age") is None, reason="age (the baseline) is not installed")
@pytest.mark.timeout(240)
def test_quick_bigfile_benchmark_reports_throughput_and_rss(tmp_path):
    out = tmp_path / "bigfile.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bigfile.py"), "--quick", "--size-mb", "8",
                        "--json", str(out)], capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for size in ("quarter", "full"):
        for tool in ("securecomm_encrypt", "securecomm_decrypt", "age_encrypt", "age_decrypt"):
            assert data[size][tool]["mb_per_s"] > 0 and data[size][tool]["peak_rss_mib"] > 0
    assert data["ratios"]["encrypt"] > 0 and data["ratios"]["decrypt"] > 0
    assert ">= 50%" in r.stdout and "< 64 MiB" in r.stdout


@pytest.mark.timeout(240)
def test_quick_filetransfer_benchmark_reports_its_figures(tmp_path):
    out = tmp_path / "transfer.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "filetransfer.py"), "--quick", "--size-mb", "4",
                        "--json", str(out)], capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["securecomm"]["send_s"] > 0 and data["securecomm"]["fetch_s"] > 0 and data["bare_tls_copy_s"] > 0
    assert data["securecomm"]["server_peak_rss_mib"] > 0 and data["ratio"] > 0
    assert data["cut_through"]["fetch_peak_rss_max_mib"] > 10  # the fetch process's own peak (wait4)
    # CPU of every process, both sides: what decides whether the ratio is a matter of overlap or of cores
    assert all(v > 0 for v in data["cut_through"]["cpu_s"].values()) and set(data["cut_through"]["cpu_s"]) == \
        {"send", "inbox_follow", "server", "fetch"}
    assert data["bare_cpu_s"]["echo_server"] > 0 and data["bare_cpu_s"]["client"] > 0
    assert data["cut_through"]["cpu_bound_ratio"] > 0 and "cannot take less than" in r.stdout
    assert ">= 60%" in r.stdout and "< 64 MiB" in r.stdout
