"""Offline encryption of a large file: `securecomm encrypt` / `decrypt` vs `age -r` / `age -d` (issue 16).

Run: python benchmarks/bigfile.py [--quick] [--size-mb N] [--rounds N] [--json FILE]

The same random file (300 MiB by default, 32 MiB with --quick) is encrypted
and decrypted by each tool, file to file, each run a separate process; wall
time (median of --rounds) and that process's peak RSS (wait4's ru_maxrss).
Outputs are removed and dirty pages flushed (sync) before each run. securecomm
fsyncs its output before the rename that makes it visible (age does not
fsync); that cost is included. Peak RSS is also measured at a quarter of the size, to show it does not grow
with the input. Targets: throughput at least 50% of age's, peak RSS under
64 MiB whatever the size. Keys: X25519 for age, the post-quantum hybrid (the
default identity) for securecomm; the KEM runs once per file, so it does not
matter at this size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import as_installed, entry_point, write_json

MIB = 1024 * 1024
#: Bound on any one tool run: a hung process must not hang the benchmark.
RUN_TIMEOUT_S = 300


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of cmd, which must succeed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + RUN_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[0]} ran over {RUN_TIMEOUT_S} s")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(block[:1] + os.urandom(16) + block[17:])  # cheap, and no two MiB alike
        f.write(os.urandom(size % MIB))


class Tools:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sc = entry_point()
        self.home = tmp / "home"
        subprocess.run([self.sc, "--home", str(self.home), "keygen"], capture_output=True, check=True)
        self.pub = str(self.home / "identities" / "default.pub")
        self.age_key = tmp / "age.key"
        subprocess.run(["age-keygen", "-o", str(self.age_key)], capture_output=True, check=True)
        self.age_recipient = subprocess.run(["age-keygen", "-y", str(self.age_key)], capture_output=True, text=True,
                                            check=True).stdout.strip()

    def commands(self, src: Path) -> dict[str, list[str]]:
        t, sc, home = self.tmp, self.sc, str(self.home)
        return {
            "securecomm_encrypt": [sc, "--home", home, "encrypt", "-r", self.pub, "-o", str(t / "f.sce"),
                                   str(src)],
            "securecomm_decrypt": [sc, "--home", home, "decrypt", "--from", self.pub, "-o",
                                   str(t / "f.out"), str(t / "f.sce")],
            "age_encrypt": ["age", "-r", self.age_recipient, "-o", str(t / "f.age"), str(src)],
            "age_decrypt": ["age", "-d", "-i", str(self.age_key), "-o", str(t / "f.age.out"), str(t / "f.age")],
        }

    def clean(self, name: str) -> None:
        """Remove what `name` writes (neither tool is asked to overwrite), then flush dirty pages,
        so that no run pays for writing back the previous run's output."""
        out = {"securecomm_encrypt": "f.sce", "securecomm_decrypt": "f.out", "age_encrypt": "f.age",
               "age_decrypt": "f.age.out"}[name]
        (self.tmp / out).unlink(missing_ok=True)
        os.sync()


def measure(tools: Tools, src: Path, size: int, rounds: int) -> dict[str, Any]:
    cmds = tools.commands(src)
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for name in ("securecomm_encrypt", "securecomm_decrypt", "age_encrypt", "age_decrypt"):
            tools.clean(name)
            samples[name].append(timed(cmds[name]))
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        secs = statistics.median(s for s, _ in runs)
        out[name] = {"seconds": secs, "mb_per_s": size / MIB / secs, "peak_rss_mib": max(r for _, r in runs) / 1024}
    if not filecmp_equal(src, tools.tmp / "f.out"):
        raise RuntimeError("securecomm round trip changed the file")
    return out


def filecmp_equal(a: Path, b: Path) -> bool:
    import filecmp

    return filecmp.cmp(a, b, shallow=False)


def main() -> None:
    as_installed()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="32 MiB, one round")
    ap.add_argument("--size-mb", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if shutil.which("age") is None:
        sys.exit("bigfile: age is not installed (the baseline)")
    size = (args.size_mb or (32 if args.quick else 300)) * MIB
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="sc-bigfile-") as tmp_name:
        tmp = Path(tmp_name)
        tools = Tools(tmp)
        results: dict[str, Any] = {"size_mib": size // MIB, "rounds": rounds}
        for label, n in (("quarter", size // 4), ("full", size)):
            src = tmp / f"in-{label}.bin"
            make_file(src, n)
            results[label] = measure(tools, src, n, 1 if label == "quarter" else rounds)
            src.unlink()
    report(results)
    print("wrote", write_json("bigfile", results, args.json))


def report(r: dict[str, Any]) -> None:
    full, quarter = r["full"], r["quarter"]
    print(f"{r['size_mib']} MiB file, median of {r['rounds']}; peak RSS at {r['size_mib'] // 4} MiB in brackets")
    print(f"{'':10} {'securecomm':>22} {'age':>22} {'ratio':>7}   target")
    for op in ("encrypt", "decrypt"):
        s, a = full[f"securecomm_{op}"], full[f"age_{op}"]
        print(f"{op:10} {s['mb_per_s']:10.0f} MiB/s {s['seconds']:6.2f} s {a['mb_per_s']:10.0f} MiB/s "
              f"{a['seconds']:6.2f} s {s['mb_per_s'] / a['mb_per_s']:6.0%}   >= 50%")
        print(f"{'  peak RSS':10} {s['peak_rss_mib']:8.1f} MiB "
              f"({quarter[f'securecomm_{op}']['peak_rss_mib']:.1f}) {a['peak_rss_mib']:13.1f} MiB "
              f"({quarter[f'age_{op}']['peak_rss_mib']:.1f})          < 64 MiB")
    r["ratios"] = {op: full[f"securecomm_{op}"]["mb_per_s"] / full[f"age_{op}"]["mb_per_s"]
                   for op in ("encrypt", "decrypt")}


if __name__ == "__main__":
    main()
