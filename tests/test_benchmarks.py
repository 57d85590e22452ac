"""The benchmark harness runs end to end in --quick mode (figures are not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_quick_harness_reports_every_figure(tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out),
                        "--markdown", str(md)], capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True
    for section, keys in {
        "crypto": ["server_open_verify_us", "limit_msgs_per_s"],
        "tls_echo": ["msgs_per_s"],
        "pipelined": ["msgs_per_s", "ratio_to_crypto_limit"],
        "latency": ["p50_ms", "p99_ms"],
        "concurrency": ["rss_per_connection_kib", "p99_ms_while_sending"],
        "fanout": ["securecomm_s"],
        "connect": ["key_logins_per_s", "bare_tls13_handshakes_per_s", "password_logins_per_s"],
        "cli": ["help_ratio", "complete_ratio", "send_oneshot_ms"],
    }.items():
        for key in keys:
            assert data[section][key] > 0, f"{section}.{key}"
    assert "| 5 fan-out |" in md.read_text()
    flood = data["flood"]
    assert flood["handshakes"]["flood_completed"] > 0 and flood["handshakes"]["p99_ms"] > 0
    assert flood["ffdhe8192"]["flood_completed"] == 0  # every ffdhe8192 ClientHello is refused
    assert flood["ffdhe8192_openssl_defaults"]["completed"] > 0  # the baseline server accepts them
    assert "| 8 send under handshake flood |" in md.read_text()
    assert "target" in r.stdout


@pytest.mark.timeout(180)
def test_quick_pq_transport_reports_every_figure(tmp_path):
    out = tmp_path / "pq.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pq_transport.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=170, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for way in ("stdlib", "pq"):
        assert data["median"][way]["echo"] > 0 and data["median"][way]["hs"] > 0, way
        assert data["idle_kib_per_connection"][way] > 0, way
    assert data["median"]["pq-x25519"]["hs"] > 0
    assert "| echo, pipelined 1 KiB frames |" in r.stdout and ">= 80%" in r.stdout
