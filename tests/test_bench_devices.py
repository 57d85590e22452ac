"""benchmarks/devices.py runs in --quick mode and reports every figure (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_quick_devices_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "devices.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "devices.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for section, keys in {"direct": ["v1_us", "v2_us", "v2_memory_us", "ratio", "ratio_memory"],
                          "prekeys": ["batch_make_sign_ms", "batch_check_ms", "claim_us", "batch_bytes"],
                          "fanout": ["v1_one_seal_us", "v2_nine_devices_us"]}.items():
        for key in keys:
            assert data[section][key] > 0, f"{section}.{key}"
    assert data["prekeys"]["batch_bytes"] == 129_800
    assert "target < 1.3x" in r.stdout


@pytest.mark.timeout(240)
def test_direct_v2_benchmark_runs_both_versions_through_the_server(tmp_path):
    out = tmp_path / "direct.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "direct_v2.py"), "--rounds", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("v1_ms_median", "v2_ms_median", "ratio", "v2_claim_at_send_ms_median", "v2_last_resort_ms_median"):
        assert data[key] > 0, key
    assert data["rounds"] == 3 and "target < 1.3x" in r.stdout
    assert data["v2_one_time_messages"] == 6  # every timed v2 message sealed to a one-time prekey


@pytest.mark.timeout(240)
def test_direct_v2_phases_runs_and_times_every_phase(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "direct_v2_phases.py"), "--rounds", "2"],
                       capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    for phase in ("recipient: one-time key wiped (fdatasync)", "recipient: seen-ids appended (fsync)",
                  "sender: next claim made ahead (off the path)", "DIRECT to RECEIPT"):
        assert phase in r.stdout, phase


@pytest.mark.timeout(240)
def test_room_keys_v2_benchmark_runs_both_versions_through_the_server(tmp_path):
    out = tmp_path / "rooms.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "room_keys_v2.py"), "--members", "3", "--rounds", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=230, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("v1_ms_median", "v2_ms_median", "ratio"):
        assert data[key] > 0, key
    assert data["members"] == 3 and data["claims_per_rotation"] == 2
