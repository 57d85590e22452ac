"""Small helpers shared by the benchmark scripts: timing, medians, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def as_installed() -> None:
    """Let the commands this benchmark starts write and reuse bytecode, as an installed package does
    (pip compiles it). Some sandboxes set PYTHONDONTWRITEBYTECODE, and then every command compiles
    ~50 modules (~0.1 s) each time it starts: a cost no user pays, counted once per process."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def machine() -> dict[str, Any]:
    import cryptography

    return {
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def wall(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall-clock seconds of `runs` executions of cmd (after one warm-up)."""
    full_env = {**os.environ, **(env or {})}
    subprocess.run(cmd, capture_output=True, env=full_env, check=False)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=full_env, check=False)
        times.append(time.perf_counter() - t0)
    return times


def per_call_us(fn: Any, rounds: int, batch: int = 50) -> float:
    """Median microseconds per call of fn(), over `rounds` batches."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1e6)
    return statistics.median(samples)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def write_json(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    path = out or HERE / f"results-{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def entry_point() -> str:
    exe = Path(sys.executable).parent / "securecomm"
    return str(exe) if exe.exists() else "securecomm"
