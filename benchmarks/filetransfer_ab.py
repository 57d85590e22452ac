"""The file transfer of benchmarks/filetransfer.py, this checkout against an older revision, same run.

Run: python benchmarks/filetransfer_ab.py [--ref main] [--size-mb 200] [--rounds 6] [--json FILE]

`git archive REF securecomm` is unpacked into a temp folder and run with this
checkout's interpreter and dependencies (its own server, users and keys);
each round copies the bytes over bare TLS once (the baseline, as in
filetransfer.py), then runs send --file + inbox + fetch with each version,
the order alternating between rounds. Medians, the ratio to the same
round's baseline, and the CPU seconds of the three client commands
together and of each server over the round (load-independent, unlike the
wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import filetransfer as FT
from benchmarks import harness as H
from benchmarks.common import entry_point, write_json

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
#: Runs the unpacked revision's CLI, not this checkout's editable install.
LAUNCH = '''import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, {tree!r})
from securecomm.cli.main import main
sys.argv[0] = "securecomm"
sys.exit(main())
'''


def unpack(ref: str, into: Path) -> str:
    """REF's securecomm package in `into`, and an executable that runs its CLI."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "securecomm"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    (into / "launch.py").write_text(LAUNCH.format(tree=str(into)))
    exe = into / "securecomm-ref"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {into / 'launch.py'} \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ref", default="main")
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    size = args.size_mb * MIB
    runs: dict[str, list[dict[str, float]]] = {args.ref: [], "this": []}
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sc-ab-") as d:
        tmp = Path(d)
        (tmp / "ref").mkdir()
        exes = {args.ref: unpack(args.ref, tmp / "ref"), "this": entry_point()}
        worlds: dict[str, Any] = {}
        try:
            for name, exe in exes.items():
                H.entry_point = lambda exe=exe: exe  # type: ignore[attr-defined]
                (tmp / name).mkdir(exist_ok=True)
                worlds[name] = FT.setup(tmp / name)
            echo = H.start_echo(tmp / "this" / "srv")
            src = tmp / "payload.bin"
            with src.open("wb") as f:
                for _ in range(size // MIB):
                    f.write(os.urandom(MIB))
            for i in range(args.rounds):
                bare.append(asyncio.run(FT.bare_tls_copy(echo.port, tmp / "this" / "srv" / "tls" / "ca.pem", size)))
                for name in (list(exes) if i % 2 == 0 else list(exes)[::-1]):
                    H.entry_point = lambda exe=exes[name]: exe  # type: ignore[attr-defined]
                    server, homes = worlds[name]
                    c0, k0 = cpu_s(server.pid), children_cpu_s()
                    sc = FT.through_server(tmp / name, server, homes, src)
                    (tmp / name / "fetched.bin").unlink()
                    runs[name].append({"send_s": sc["send_s"], "fetch_s": sc["fetch_s"], "total_s": sc["total_s"],
                                       "ratio": bare[-1] / sc["total_s"], "clients_cpu_s": children_cpu_s() - k0,
                                       "server_cpu_s": cpu_s(server.pid) - c0,
                                       "server_peak_rss_mib": sc["server_peak_rss_mib"]})
                print(f"round {i + 1}: bare {bare[-1]:.2f} s; " + "; ".join(
                    f"{n} {runs[n][-1]['send_s']:.2f} + {runs[n][-1]['fetch_s']:.2f} = {runs[n][-1]['total_s']:.2f} s"
                    for n in exes), flush=True)
        finally:
            for server, _ in worlds.values():
                server.stop()
            if "echo" in locals():
                echo.stop()
    result: dict[str, Any] = {"size_mib": size / MIB, "rounds": args.rounds, "ref": args.ref,
                              "bare_tls_copy_s": statistics.median(bare), "each_bare_s": bare}
    print(f"{size // MIB} MiB, medians of {args.rounds} rounds; bare TLS up and back {statistics.median(bare):.2f} s")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        result[name] = {**med, "each": rs}
        print(f"  {name:>8}: send {med['send_s']:.2f} + fetch {med['fetch_s']:.2f} = {med['total_s']:.2f} s, ratio "
              f"{med['ratio']:.0%}; CPU: clients {med['clients_cpu_s']:.2f} s, server {med['server_cpu_s']:.2f} s; "
              f"server peak RSS {med['server_peak_rss_mib']:.1f} MiB")
    print("wrote", write_json("filetransfer-ab", result, args.json))


if __name__ == "__main__":
    main()
