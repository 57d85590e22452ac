"""A large file from one client to another through the server vs the same bytes over bare TLS (issue 16).

Run: python benchmarks/filetransfer.py [--quick] [--size-mb N] [--json FILE]

A real server (real TLS, loopback), users alice and bob logged in with keys.
Figures: `securecomm send --to bob --file F` then `securecomm fetch ID -o OUT`
(sealing, upload in FILE_PUT chunks, the notice, download, checks, opening),
wall time of each command; and the same with cut-through as a person gets it
(bob's `inbox --follow` hears of the file when the upload starts and his
`fetch` runs while alice uploads: from the start of `send` to the end of both),
and the server's peak RSS (VmHWM, reset after the setup's password logins)
over the transfer, with its idle RSS before it.
Baseline, same run: the same number of bytes written to and read back from
a bare asyncio TLS 1.3 echo server (benchmarks/tls_echo.py) by one client:
what moving the bytes up and down through one relay costs with no protocol,
no disk and no cryptography above TLS. Targets: the transfer at least 60% of
the baseline's throughput, server peak RSS under 64 MiB.
Default 200 MiB (--quick: 24 MiB), 3 rounds alternating baseline and transfer; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness as H
from benchmarks.common import as_installed, entry_point, write_json

MIB = 1024 * 1024
#: Seconds any one command of a round may take before it is killed.
WAIT_LIMIT = 600.0


def status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Start the server's VmHWM again from its current RSS (Linux: clear_refs 5), so that the peak
    read after the transfer is the transfer's, not the password logins' of the setup. True if done."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def setup(tmp: Path) -> tuple[Any, dict[str, Path]]:
    srv_home = tmp / "srv"
    H.securecomm(srv_home, "certgen")
    server = H.start_server(srv_home, "--rate", "0", "--relay-rate", "0")
    homes = {}
    for user in ("alice", "bob"):
        H.securecomm(srv_home, "user", "add", user, "--password-stdin", input=(H.PASSWORD + "\n").encode())
        homes[user] = tmp / user
        H.securecomm(homes[user], "user", "login", user, "--server", f"localhost:{server.port}", "--ca",
                     str(srv_home / "tls" / "ca.pem"), "--password-stdin", input=(H.PASSWORD + "\n").encode())
    return server, homes


def timed(home: Path, *args: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r = H.securecomm(home, *args)
    return time.perf_counter() - t0, r.stdout


def through_server(tmp: Path, server: Any, homes: dict[str, Path], src: Path) -> dict[str, Any]:
    setup_peak, idle = peak_rss_mib(server.pid), status_mib(server.pid, "VmRSS")
    reset = reset_peak(server.pid)
    rss_before = peak_rss_mib(server.pid)
    send_s, out = timed(homes["alice"], "send", "--to", "bob", "--file", str(src), "--json")
    file_id = json.loads(out)["file_id"]
    H.securecomm(homes["bob"], "inbox")  # shows the notice, pins alice, saves the notice
    dest = tmp / "fetched.bin"
    fetch_s, _ = timed(homes["bob"], "fetch", file_id, "-o", str(dest))
    if dest.stat().st_size != src.stat().st_size:
        raise RuntimeError("the fetched file has the wrong size")
    return {"send_s": send_s, "fetch_s": fetch_s, "total_s": send_s + fetch_s,
            "server_peak_rss_mib": peak_rss_mib(server.pid), "server_rss_before_mib": rss_before,
            "server_idle_rss_mib": idle, "server_setup_peak_rss_mib": setup_peak, "peak_reset": reset}


def cut_through(tmp: Path, server: Any, homes: dict[str, Path], src: Path) -> dict[str, Any]:
    """The way a person sends a file now (docs/PROTOCOL.md 4.4, cut-through): alice's `send` and bob's
    `inbox --follow --json` start together; bob's `fetch` starts when the notice arrives (right after
    the offer) and downloads while alice still uploads. Timed from the start of `send` to the end of
    whichever command ends last."""
    import subprocess

    reset_peak(server.pid)
    exe = entry_point()
    server_cpu = cpu_s(server.pid)
    t0 = time.perf_counter()
    sender = subprocess.Popen([exe, "--home", str(homes["alice"]), "send", "--to", "bob", "--file", str(src)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    follow = subprocess.Popen([exe, "--home", str(homes["bob"]), "inbox", "--follow", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert follow.stdout is not None
        file_id = None
        for line in follow.stdout:
            file_id = json.loads(line).get("file", {}).get("id")
            if file_id:
                break
        notice_s = time.perf_counter() - t0
    finally:
        follow.kill()
        follow_cpu = wait_with_usage(follow)[2]
    if not file_id:
        raise RuntimeError("bob never heard of the file")
    dest = tmp / "fetched.bin"
    fetcher = subprocess.Popen([exe, "--home", str(homes["bob"]), "fetch", file_id, "-o", str(dest)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s_err, _, send_cpu = wait_with_usage(sender)
    send_s = time.perf_counter() - t0
    f_err, fetch_rss, fetch_cpu = wait_with_usage(fetcher)
    total_s = time.perf_counter() - t0
    server_cpu = cpu_s(server.pid) - server_cpu
    if sender.returncode or fetcher.returncode:
        raise RuntimeError(f"send: {s_err.decode()} fetch: {f_err.decode()}")
    if dest.stat().st_size != src.stat().st_size:
        raise RuntimeError("the fetched file has the wrong size")
    return {"notice_s": notice_s, "send_s": send_s, "total_s": total_s, "server_peak_rss_mib": peak_rss_mib(server.pid),
            "fetch_peak_rss_mib": fetch_rss, "cpu_s": {"send": send_cpu, "inbox_follow": follow_cpu,
                                                       "server": server_cpu, "fetch": fetch_cpu}}


def wait_with_usage(proc: Any) -> tuple[bytes, float, float]:
    """Wait for `proc` and return (its stderr if piped, its own peak RSS in MiB, its CPU seconds), from wait4.
    Killed after WAIT_LIMIT seconds (a hung command must not hang the benchmark)."""
    import threading

    watchdog = threading.Timer(WAIT_LIMIT, proc.kill)
    watchdog.start()
    try:
        err = proc.stderr.read() if proc.stderr is not None else b""
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return err, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


async def bare_tls_copy(port: int, cafile: Path, size: int) -> float:
    """Write `size` bytes to the echo server and read them all back, concurrently, one connection."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    block = os.urandom(256 * 1024)
    t0 = time.perf_counter()

    async def write_all() -> None:
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async def read_all() -> None:
        got = 0
        while got < size // len(block) * len(block):
            data = await reader.read(1 << 20)
            if not data:
                raise RuntimeError("echo closed early")
            got += len(data)

    await asyncio.wait_for(asyncio.gather(write_all(), read_all()), 300)
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def main() -> None:
    as_installed()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size-mb", type=int)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (baseline, then securecomm)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    size = (args.size_mb or (24 if args.quick else 200)) * MIB
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sc-transfer-") as d:
        tmp = Path(d)
        server, homes = setup(tmp)
        echo = H.start_echo(tmp / "srv")
        try:
            src = tmp / "payload.bin"
            with src.open("wb") as f:
                for _ in range(size // MIB):
                    f.write(os.urandom(MIB))
            for i in range(args.rounds):
                echo_cpu, client_cpu = cpu_s(echo.pid), own_cpu_s()
                bare_s = asyncio.run(bare_tls_copy(echo.port, tmp / "srv" / "tls" / "ca.pem", size))
                bare_cpu = {"echo_server": cpu_s(echo.pid) - echo_cpu, "client": own_cpu_s() - client_cpu}
                sc = through_server(tmp, server, homes, src)
                (tmp / "fetched.bin").unlink()
                ct = cut_through(tmp, server, homes, src)
                (tmp / "fetched.bin").unlink()
                rounds.append({"bare_tls_copy_s": bare_s, "bare_cpu_s": bare_cpu, **sc, "ratio": bare_s / sc["total_s"],
                               "cut_through": ct, "cut_through_ratio": bare_s / ct["total_s"]})
                print(f"  round {i + 1}: bare {bare_s:.2f} s | send {sc['send_s']:.2f} s, then fetch "
                      f"{sc['fetch_s']:.2f} s = {sc['total_s']:.2f} s, ratio {bare_s / sc['total_s']:.0%} | "
                      f"cut-through: notice at "
                      f"{ct['notice_s']:.2f} s, send ends {ct['send_s']:.2f} s, fetch ends {ct['total_s']:.2f} s, "
                      f"ratio {bare_s / ct['total_s']:.0%} | server peak {sc['server_peak_rss_mib']:.1f} / "
                      f"{ct['server_peak_rss_mib']:.1f} MiB | fetch peak {ct['fetch_peak_rss_mib']:.1f} MiB | CPU s: "
                      f"bare {sum(bare_cpu.values()):.2f}, cut-through {sum(ct['cpu_s'].values()):.2f}", flush=True)
        finally:
            server.stop()
            echo.stop()
    mib = size / MIB
    med = {k: median([r[k] for r in rounds]) for k in ("bare_tls_copy_s", "send_s", "fetch_s", "total_s", "ratio",
                                                       "server_peak_rss_mib", "server_rss_before_mib")}
    sc = {k: med[k] for k in ("send_s", "fetch_s", "total_s", "server_peak_rss_mib", "server_rss_before_mib")}
    sc.update({k: rounds[-1][k] for k in ("server_idle_rss_mib", "server_setup_peak_rss_mib", "peak_reset")})
    sc["server_peak_rss_max_mib"] = max(r["server_peak_rss_mib"] for r in rounds)
    bare_s = med["bare_tls_copy_s"]
    ct = {k: median([r["cut_through"][k] for r in rounds]) for k in ("notice_s", "send_s", "total_s",
                                                                     "server_peak_rss_mib")}
    ct["server_peak_rss_max_mib"] = max(r["cut_through"]["server_peak_rss_mib"] for r in rounds)
    ct["fetch_peak_rss_max_mib"] = max(r["cut_through"]["fetch_peak_rss_mib"] for r in rounds)
    ct["ratio"] = median([r["cut_through_ratio"] for r in rounds])
    # Where CPU is the limit: N cores run the transfer's CPU seconds in no less than cpu / N of wall time
    ct["cpu_s"] = {k: median([r["cut_through"]["cpu_s"][k] for r in rounds]) for k in rounds[0]["cut_through"]["cpu_s"]}
    bare_cpu = {k: median([r["bare_cpu_s"][k] for r in rounds]) for k in rounds[0]["bare_cpu_s"]}
    cores = os.cpu_count() or 1
    ct["cpu_bound_ratio"] = bare_s / (sum(ct["cpu_s"].values()) / cores)
    r = {"size_mib": mib, "rounds": len(rounds), "securecomm": sc, "cut_through": ct, "bare_tls_copy_s": bare_s,
         "bare_cpu_s": bare_cpu, "cores": cores,
         "securecomm_mib_per_s": mib / sc["total_s"], "bare_tls_mib_per_s": mib / bare_s,
         "ratio": med["ratio"], "each_round": rounds}
    print(f"{mib:.0f} MiB from alice to bob through the server, medians of {len(rounds)} alternating rounds")
    print(f"  send --file {sc['send_s']:.2f} s + fetch {sc['fetch_s']:.2f} s = {sc['total_s']:.2f} s "
          f"({r['securecomm_mib_per_s']:.0f} MiB/s)")
    print(f"  baseline: the same bytes up and back over bare TLS {bare_s:.2f} s ({r['bare_tls_mib_per_s']:.0f} MiB/s)")
    print(f"  ratio (median of the rounds' ratios) {r['ratio']:.0%}")
    print(f"  cut-through (fetch started at the notice, {ct['notice_s']:.2f} s in): send + fetch together "
          f"{ct['total_s']:.2f} s ({mib / ct['total_s']:.0f} MiB/s), ratio {ct['ratio']:.0%}   target >= 60%; "
          f"server peak RSS {ct['server_peak_rss_mib']:.1f} MiB, highest {ct['server_peak_rss_max_mib']:.1f}; "
          f"fetch's peak RSS highest {ct['fetch_peak_rss_max_mib']:.1f} MiB")
    print(f"  CPU seconds, medians: cut-through {sum(ct['cpu_s'].values()):.2f} ("
          + ", ".join(f"{k} {v:.2f}" for k, v in ct["cpu_s"].items())
          + f"); baseline {sum(bare_cpu.values()):.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in bare_cpu.items())
          + f"). On {cores} cores the cut-through cannot take less than {sum(ct['cpu_s'].values()) / cores:.2f} s: "
          f"at most {ct['cpu_bound_ratio']:.0%} of the baseline here, however well its stages overlap")
    print(f"  server peak RSS over the transfer {sc['server_peak_rss_mib']:.1f} MiB, highest "
          f"{sc['server_peak_rss_max_mib']:.1f} (before: {sc['server_rss_before_mib']:.1f}"
          f"{'' if sc['peak_reset'] else ', peak not reset: includes setup'})   target < 64 MiB")
    print(f"  server idle RSS after setup {sc['server_idle_rss_mib']:.1f} MiB; peak during setup (password logins) "
          f"{sc['server_setup_peak_rss_mib']:.1f} MiB")
    print("wrote", write_json("filetransfer", {"quick": args.quick, **r}, args.json))


if __name__ == "__main__":
    main()
